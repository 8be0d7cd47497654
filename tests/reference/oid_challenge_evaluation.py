# Copyright 2017 The TensorFlow Authors. All Rights Reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
# Vendored for the tests of nnunet_vasculature (HuBMAP vasculature AP@0.6) from GitHub tensorflow/models,
# research/object_detection/:
#   utils/np_mask_ops.py            area, intersection, iou                      (verbatim)
#   utils/np_box_ops.py             area, intersection, iou                      (verbatim)
#   utils/metrics.py                compute_precision_recall, compute_average_precision (verbatim)
#   metrics/oid_challenge_evaluation_utils.py  _to_normalized_box                (verbatim)
#   utils/per_image_evaluation.py   PerImageEvaluation._remove_invalid_boxes, ._compute_tp_fp_for_single_class
#   utils/object_detection_evaluation.py  ObjectDetectionEvaluation.add_single_ground_truth_image_info /
#       add_single_detected_image_info / _update_ground_truth_statistics / evaluate, and
#       OpenImagesChallengeEvaluator's evaluatable-labels rule
#   utils/np_box_list_ops.py        sort_by_field, non_max_suppression with iou_threshold 1.0 (sort only)
# Modifications (the Apache-2.0 licence asks for them to be stated): the classes are reduced to functions for ONE
# class (OpenImagesInstanceSegmentationChallengeEvaluator: evaluate_masks=True, group_of_weight=0, no difficult
# and no group-of boxes, so the group-of/ioa branches are inert and left out); BoxList/BoxMaskList objects are
# replaced by plain arrays; NMS at iou_threshold 1.0 (the evaluator's default) is its sort by score plus the
# 10000-box cap. The matching loop, counting and AP code are unchanged.
"""Open Images Challenge instance-segmentation AP of one class, as TF Object Detection API computes it."""
import numpy as np

EPSILON = 1e-7


# ---- utils/np_mask_ops.py
def mask_area(masks):
  if masks.dtype != np.uint8:
    raise ValueError('Masks type should be np.uint8')
  return np.sum(masks, axis=(1, 2), dtype=np.float32)


def mask_intersection(masks1, masks2):
  if masks1.dtype != np.uint8 or masks2.dtype != np.uint8:
    raise ValueError('masks1 and masks2 should be of type np.uint8')
  n = masks1.shape[0]
  m = masks2.shape[0]
  answer = np.zeros([n, m], dtype=np.float32)
  for i in np.arange(n):
    for j in np.arange(m):
      answer[i, j] = np.sum(np.minimum(masks1[i], masks2[j]), dtype=np.float32)
  return answer


def mask_iou(masks1, masks2):
  if masks1.dtype != np.uint8 or masks2.dtype != np.uint8:
    raise ValueError('masks1 and masks2 should be of type np.uint8')
  intersect = mask_intersection(masks1, masks2)
  area1 = mask_area(masks1)
  area2 = mask_area(masks2)
  union = np.expand_dims(area1, axis=1) + np.expand_dims(
      area2, axis=0) - intersect
  return intersect / np.maximum(union, EPSILON)


# ---- utils/np_box_ops.py
def box_area(boxes):
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_intersection(boxes1, boxes2):
  [y_min1, x_min1, y_max1, x_max1] = np.split(boxes1, 4, axis=1)
  [y_min2, x_min2, y_max2, x_max2] = np.split(boxes2, 4, axis=1)

  all_pairs_min_ymax = np.minimum(y_max1, np.transpose(y_max2))
  all_pairs_max_ymin = np.maximum(y_min1, np.transpose(y_min2))
  intersect_heights = np.maximum(
      np.zeros(all_pairs_max_ymin.shape),
      all_pairs_min_ymax - all_pairs_max_ymin)
  all_pairs_min_xmax = np.minimum(x_max1, np.transpose(x_max2))
  all_pairs_max_xmin = np.maximum(x_min1, np.transpose(x_min2))
  intersect_widths = np.maximum(
      np.zeros(all_pairs_max_xmin.shape),
      all_pairs_min_xmax - all_pairs_max_xmin)
  return intersect_heights * intersect_widths


def box_iou(boxes1, boxes2):
  intersect = box_intersection(boxes1, boxes2)
  area1 = box_area(boxes1)
  area2 = box_area(boxes2)
  union = np.expand_dims(area1, axis=1) + np.expand_dims(
      area2, axis=0) - intersect
  return intersect / union


# ---- utils/metrics.py
def compute_precision_recall(scores, labels, num_gt):
  if not isinstance(labels, np.ndarray) or len(labels.shape) != 1:
    raise ValueError("labels must be single dimension numpy array")

  if labels.dtype != float and labels.dtype != bool:
    raise ValueError("labels type must be either bool or float")

  if not isinstance(scores, np.ndarray) or len(scores.shape) != 1:
    raise ValueError("scores must be single dimension numpy array")

  if num_gt < np.sum(labels):
    raise ValueError("Number of true positives must be smaller than num_gt.")

  if len(scores) != len(labels):
    raise ValueError("scores and labels must be of the same size.")

  if num_gt == 0:
    return None, None

  sorted_indices = np.argsort(scores)
  sorted_indices = sorted_indices[::-1]
  true_positive_labels = labels[sorted_indices]
  false_positive_labels = (true_positive_labels <= 0).astype(float)
  cum_true_positives = np.cumsum(true_positive_labels)
  cum_false_positives = np.cumsum(false_positive_labels)
  precision = cum_true_positives.astype(float) / (
      cum_true_positives + cum_false_positives)
  recall = cum_true_positives.astype(float) / num_gt
  return precision, recall


def compute_average_precision(precision, recall):
  if precision is None:
    if recall is not None:
      raise ValueError("If precision is None, recall must also be None")
    return np.nan

  if not isinstance(precision, np.ndarray) or not isinstance(
      recall, np.ndarray):
    raise ValueError("precision and recall must be numpy array")
  if precision.dtype != float or recall.dtype != float:
    raise ValueError("input must be float numpy array.")
  if len(precision) != len(recall):
    raise ValueError("precision and recall must be of the same size.")
  if not precision.size:
    return 0.0
  if np.amin(precision) < 0 or np.amax(precision) > 1:
    raise ValueError("Precision must be in the range of [0, 1].")
  if np.amin(recall) < 0 or np.amax(recall) > 1:
    raise ValueError("recall must be in the range of [0, 1].")
  if not all(recall[i] <= recall[i + 1] for i in range(len(recall) - 1)):
    raise ValueError("recall must be a non-decreasing array")

  recall = np.concatenate([[0], recall, [1]])
  precision = np.concatenate([[0], precision, [0]])

  # Preprocess precision to be a non-decreasing array
  for i in range(len(precision) - 2, -1, -1):
    precision[i] = np.maximum(precision[i], precision[i + 1])

  indices = np.where(recall[1:] != recall[:-1])[0] + 1
  average_precision = np.sum(
      (recall[indices] - recall[indices - 1]) * precision[indices])
  return average_precision


# ---- metrics/oid_challenge_evaluation_utils.py
def _to_normalized_box(mask_np):
  coord1, coord2 = np.nonzero(mask_np)
  if coord1.size > 0:
    ymin = float(min(coord1)) / mask_np.shape[0]
    ymax = float(max(coord1) + 1) / mask_np.shape[0]
    xmin = float(min(coord2)) / mask_np.shape[1]
    xmax = float((max(coord2) + 1)) / mask_np.shape[1]

    return np.array([ymin, xmin, ymax, xmax])
  else:
    return np.array([0.0, 0.0, 0.0, 0.0])


def boxes_of(masks):
  return np.stack([_to_normalized_box(m) for m in masks]) if len(masks) else np.zeros((0, 4))


# ---- utils/per_image_evaluation.py (one class, no difficult / group-of boxes)
def _remove_invalid_boxes(detected_boxes, detected_scores, detected_masks):
  valid_indices = np.logical_and(detected_boxes[:, 0] < detected_boxes[:, 2],
                                 detected_boxes[:, 1] < detected_boxes[:, 3])
  return (detected_boxes[valid_indices], detected_scores[valid_indices],
          detected_masks[valid_indices])


def _sort_and_cap(detected_boxes, detected_scores, detected_masks, max_output_size=10000):
  # np_box_list_ops.sort_by_field(boxlist, 'scores') + non_max_suppression's iou_threshold == 1.0 branch
  sorted_indices = np.argsort(detected_scores)
  sorted_indices = sorted_indices[::-1][:max_output_size]
  return detected_boxes[sorted_indices], detected_scores[sorted_indices], detected_masks[sorted_indices]


def compute_tp_fp_for_single_class(detected_boxes, detected_scores, detected_masks, groundtruth_boxes,
                                   groundtruth_masks, matching_iou_threshold):
  if detected_boxes.size == 0:
    return np.array([], dtype=float), np.array([], dtype=bool)
  mask_presence_indicator = (np.sum(groundtruth_masks, axis=(1, 2)) > 0)
  det_boxes, scores, det_masks = _sort_and_cap(detected_boxes, detected_scores, detected_masks)
  iou_mask = mask_iou(det_masks, groundtruth_masks[mask_presence_indicator])
  iou = np.ndarray([0, 0])
  if sum(mask_presence_indicator) < len(mask_presence_indicator):
    # Not all masks are present - some masks are empty: matched as boxes, detections on them ignored
    iou = box_iou(det_boxes, groundtruth_boxes[~mask_presence_indicator])
  num_detected_boxes = detected_boxes.shape[0]
  if groundtruth_boxes.size == 0:
    return scores, np.zeros(num_detected_boxes, dtype=bool)

  tp_fp_labels = np.zeros(num_detected_boxes, dtype=bool)
  is_matched_to_box = np.zeros(num_detected_boxes, dtype=bool)

  def compute_match_iou(iou, is_box):
    max_overlap_gt_ids = np.argmax(iou, axis=1)
    is_gt_detected = np.zeros(iou.shape[1], dtype=bool)
    for i in range(num_detected_boxes):
      gt_id = max_overlap_gt_ids[i]
      is_evaluatable = (not tp_fp_labels[i] and
                        iou[i, gt_id] >= matching_iou_threshold)
      if is_evaluatable:
        if not is_gt_detected[gt_id]:
          tp_fp_labels[i] = True
          is_gt_detected[gt_id] = True
          is_matched_to_box[i] = is_box

  if iou_mask.shape[1] > 0:
    compute_match_iou(iou_mask, is_box=False)
  if iou.shape[1] > 0:
    compute_match_iou(iou, is_box=True)
  valid_entries = ~is_matched_to_box
  return scores[valid_entries], tp_fp_labels[valid_entries].astype(float)


# ---- utils/object_detection_evaluation.py (OpenImagesInstanceSegmentationChallengeEvaluator, one class)
def challenge_average_precision(tiles, matching_iou_threshold=0.6):
  """tiles: iterable of (gt_masks (M, H, W) uint8, det_masks (N, H, W) uint8, scores (N,)).

  A tile is added to the evaluator as the HuBMAP metric does: one ground-truth row per truth mask (box from the
  mask), image-level label = the class of the rows, detections with boxes from their masks."""
  num_gt_instances = 0.0
  scores_per_class, tp_fp_labels_per_class = [], []
  for gt_masks, det_masks, det_scores in tiles:
    gt_masks, det_masks = np.asarray(gt_masks, np.uint8), np.asarray(det_masks, np.uint8)
    det_scores = np.asarray(det_scores, dtype=float)
    groundtruth_boxes = boxes_of(gt_masks)
    # add_single_ground_truth_image_info: boxes without masks are counted as difficult (ignored)
    mask_absent = (np.sum(gt_masks, axis=(1, 2)) == 0).astype(dtype=bool) if len(gt_masks) else np.zeros(0, bool)
    num_gt_instances += np.sum(~mask_absent)
    # OpenImagesChallengeEvaluator: detections of a class that the image's labels do not verify are dropped
    evaluatable = len(gt_masks) > 0
    if not evaluatable:
      continue
    detected_boxes = boxes_of(det_masks)
    if len(det_masks) == 0:
      det_masks = np.zeros((0, *gt_masks.shape[1:]), np.uint8)
    detected_boxes, det_scores, det_masks = _remove_invalid_boxes(detected_boxes, det_scores, det_masks)
    scores, tp_fp_labels = compute_tp_fp_for_single_class(
        detected_boxes, det_scores, det_masks, groundtruth_boxes, gt_masks, matching_iou_threshold)
    if scores.shape[0] > 0:
      scores_per_class.append(scores)
      tp_fp_labels_per_class.append(tp_fp_labels)
  if num_gt_instances == 0:
    return float('nan')
  if not scores_per_class:
    scores = np.array([], dtype=float)
    tp_fp_labels = np.array([], dtype=float)
  else:
    scores = np.concatenate(scores_per_class)
    tp_fp_labels = np.concatenate(tp_fp_labels_per_class)
  precision, recall = compute_precision_recall(scores, tp_fp_labels, num_gt_instances)
  return float(compute_average_precision(precision, recall))
