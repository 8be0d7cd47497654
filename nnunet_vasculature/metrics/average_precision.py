"""Average precision of one class at mask IoU >= 0.6, as the HuBMAP vasculature competition scores it.

The competition's metric is the OpenImages instance-segmentation challenge evaluation with one class
(DOMAIN §8):

1. Detections are taken in descending score over all tiles. Each is compared with the ground-truth
   instances of its own tile and matched to the one of highest mask IoU only (the first of equal IoU).
   It is a true positive if that IoU is >= ``iou_threshold`` and that truth is not matched yet (the truth
   is then matched); otherwise a false positive — also when another, unmatched truth would pass.
2. Precision and recall are pooled over all tiles: after the k-th detection, precision = TP_k / k and
   recall = TP_k / (number of truths in all tiles).
3. AP is the all-point interpolated area under that curve: precision is replaced by its running maximum
   from the right, and summed over the recall steps (the PASCAL VOC 2010+ / OpenImages rule).

Empty masks and empty tiles, as the reference (TF Object Detection API, ``OpenImagesInstanceSegmentation
ChallengeEvaluator`` fed by ``oid_challenge_evaluation_utils``, which derives each box from its mask):

* a detection whose mask is empty is dropped, neither true nor false positive (its box ``[0, 0, 0, 0]`` is
  invalid and ``PerImageEvaluation._remove_invalid_boxes`` removes it);
* a truth whose mask is empty is not counted (boxes without a mask count as "difficult"); its zero box overlaps
  nothing, so no detection is ignored because of it;
* a tile without any truth is not evaluated: the challenge evaluator drops detections of a class the image's
  labels do not verify, so its detections are not false positives. (A tile whose truths all have empty masks
  is evaluated: its detections are false positives.)

Ties: detections of equal score keep their input order (tile order, then order within a tile) — a
stable sort. The reference sorts with ``np.argsort(scores)[::-1]`` (per tile before matching, and over all
tiles for the curve); numpy's default sort is stable for short arrays, so that *reverses* the input order of
equal scores there, and its order for longer arrays is unspecified. With distinct scores the two agree exactly
(tests/test_average_precision_reference.py). The reference also computes IoU in float32, which can differ from
this float64 IoU only for an IoU within ~1e-7 of the threshold.

Differences from pycocotools' ``COCOeval`` at ``iouThrs=[0.6]`` (segm, area "all"):

* COCO interpolates precision at 101 recall points (0, 0.01, …, 1) instead of at every recall step, so
  its AP differs in general (by up to ~1/101 per precision level; it agrees when every recall step
  lands on a multiple of 0.01, e.g. 100 truths).
* COCO matches a detection to the best *still unmatched* truth with IoU >= the threshold; here only the
  highest-IoU truth is tried. They differ when a detection passes the threshold with two overlapping
  truths and the better one is already taken.
* COCO has ``iscrowd`` truths (matched repeatedly, detections on them ignored) and drops truths and
  detections by area range and keeps at most ``maxDets`` detections per image; nothing of that exists
  here (OpenImages' "group-of" boxes are not used by this competition).
* COCO computes a crowd-aware IoU and returns -1 when there are no truths; this returns NaN.
* COCO counts detections on a tile without truths, and detections with an empty mask, as false positives and
  an empty truth mask as a miss; the Open Images challenge evaluation (and this module) does not.

Shapes and units: a tile's instances are an integer label image ``(H, W)`` (0 = background,
instance k = label k; overlapping instances cannot be expressed), a stack of binary masks
``(N, H, W)`` (instances may overlap), or :class:`RLEMasks`, the masks as COCO run-length encodings (instances may
overlap; a tile of thousands of instances is never decoded). IoU is counted in pixels. Overlaps are computed for
all pairs of a tile at once from one ``np.bincount`` of the joint labels (label images), a sparse product
(stacks) or pycocotools' ``mask.iou`` on the runs (RLEs), never with a per-pair loop over dense masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

IOU_THRESHOLD = 0.6


@dataclass(frozen=True)
class RLEMasks:
    """One tile's instance masks as COCO RLEs (pycocotools' ``{"size": [H, W], "counts": ...}``), in order.

    Memory follows the runs, not ``N x H x W``: IoUs come from pycocotools' ``mask.iou`` on the runs."""
    rles: tuple
    shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rles)

    def areas(self) -> np.ndarray:
        """Pixels of each mask.

        Returns:
            ``(N,)`` int64.
        """
        from pycocotools import mask as coco_mask
        # one call per mask: pycocotools' list form counts the masks in a uint8 (overflows past 255)
        return np.asarray([int(coco_mask.area(rle)) for rle in self.rles], np.int64)

    def subset(self, keep: np.ndarray) -> RLEMasks:
        """The masks where ``keep`` is True.

        Args:
            keep: ``(N,)`` bool.

        Returns:
            the selected masks, in order.
        """
        return RLEMasks(tuple(r for r, k in zip(self.rles, keep) if k), self.shape)

    def masks(self) -> Iterator[np.ndarray]:
        """Each mask decoded, one at a time.

        Returns:
            an iterator of ``(H, W)`` bool arrays.
        """
        from pycocotools import mask as coco_mask
        for rle in self.rles:
            yield coco_mask.decode(rle).astype(bool)


def _rle_ious(det: RLEMasks, gt: RLEMasks) -> np.ndarray:
    """``(n_det, n_gt)`` IoUs of two tiles' RLEs (pycocotools' plain mask IoU: no crowd truths)."""
    if not isinstance(det, RLEMasks) or not isinstance(gt, RLEMasks):
        raise TypeError("detections and truths are RLEMasks both, or neither")
    if tuple(det.shape) != tuple(gt.shape):
        raise ValueError(f"tile sizes differ: detections {det.shape}, truths {gt.shape}")
    if not len(det) or not len(gt):
        return np.zeros((len(det), len(gt)))
    from pycocotools import mask as coco_mask
    ious = coco_mask.iou(list(det.rles), list(gt.rles), [0] * len(gt))
    return np.asarray(ious, np.float64).reshape(len(det), len(gt))


def _as_sparse(inst: np.ndarray):  # noqa: ANN202 - scipy.sparse matrix
    """(N, H*W) 0/1 sparse matrix of a label image or a mask stack, and N."""
    from scipy import sparse
    inst = np.asarray(inst)
    if inst.ndim == 2:
        flat = inst.ravel()
        idx = np.flatnonzero(flat)
        n = int(flat.max()) if flat.size else 0
        m = sparse.csr_matrix((np.ones(len(idx), np.float32), (flat[idx].astype(np.int64) - 1, idx)),
                              shape=(n, flat.size))
        return m, n
    if inst.ndim == 3:
        n = len(inst)
        return sparse.csr_matrix(inst.reshape(n, -1) != 0, dtype=np.float32), n
    raise ValueError(f"instances must be a (H, W) label image or an (N, H, W) mask stack, got shape {inst.shape}")


def mask_ious(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every detection with every truth of one tile: ``(n_det, n_gt)`` float64.

    ``det`` and ``gt`` are label images ``(H, W)`` (instances 1..max label; a label that does not occur is
    an empty instance of IoU 0) or mask stacks ``(N, H, W)``; both of the same ``H, W``. Two label images
    use one ``np.bincount`` of ``gt * (n_det + 1) + det``; otherwise a sparse matrix product; two
    :class:`RLEMasks` pycocotools' ``mask.iou`` on their runs."""
    if isinstance(det, RLEMasks) or isinstance(gt, RLEMasks):
        return _rle_ious(det, gt)
    det, gt = np.asarray(det), np.asarray(gt)
    if det.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"tile sizes differ: detections {det.shape[-2:]}, truths {gt.shape[-2:]}")
    if det.ndim == 2 and gt.ndim == 2:
        nd, ng = int(det.max(initial=0)), int(gt.max(initial=0))
        if nd == 0 or ng == 0:
            return np.zeros((nd, ng))
        fg = (det != 0) | (gt != 0)
        joint = gt[fg].astype(np.int64) * (nd + 1) + det[fg]
        counts = np.bincount(joint, minlength=(ng + 1) * (nd + 1)).reshape(ng + 1, nd + 1)
        inter = counts[1:, 1:].T.astype(np.float64)
        area_d, area_g = counts[:, 1:].sum(0), counts[1:, :].sum(1)
    else:
        d, nd = _as_sparse(det)
        g, ng = _as_sparse(gt)
        if nd == 0 or ng == 0:
            return np.zeros((nd, ng))
        inter = (d @ g.T).toarray().astype(np.float64)
        area_d, area_g = np.asarray(d.sum(1)).ravel(), np.asarray(g.sum(1)).ravel()
    union = area_d[:, None] + area_g[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_tile(ious: np.ndarray, scores: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True-positive flags of one tile's detections (in their input order), matched in descending score
    (stable) each to its highest-IoU truth only; ``ious`` is ``(n_det, n_gt)``."""
    scores = np.asarray(scores, dtype=np.float64)
    tp = np.zeros(len(scores), bool)
    if ious.shape[1] == 0 or len(scores) == 0:
        return tp
    best = np.argmax(ious, axis=1)
    taken = np.zeros(ious.shape[1], bool)
    for i in np.argsort(-scores, kind="stable"):
        g = best[i]
        if ious[i, g] >= iou_threshold and not taken[g]:
            tp[i] = taken[g] = True
    return tp


def ap_from_matches(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP from pooled detections (score, TP flag, in tile order) and the number of
    truths. NaN when ``n_gt`` is 0; 0.0 when there are truths but no detections."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(tp, bool)[order]
    ctp = np.cumsum(hits)
    precision = ctp / np.arange(1, len(hits) + 1)
    recall = ctp / n_gt
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _non_empty(det: np.ndarray, n_scores: int) -> np.ndarray:
    """Which of the ``n_scores`` detections (label k = detection k - 1, or mask k) have a non-empty mask."""
    out = np.zeros(n_scores, bool)
    if isinstance(det, RLEMasks):
        out[:len(det)] = det.areas() > 0
    elif det.ndim == 2:
        counts = np.bincount(det.ravel(), minlength=n_scores + 1)[1:n_scores + 1] if det.size else np.zeros(0)
        out[:len(counts)] = counts > 0
    elif len(det):
        out[:len(det)] = det.reshape(len(det), -1).any(axis=1)
    return out


class APAccumulator:
    """Add tiles one at a time (``add``), then ``score()``; keeps only scores and TP flags."""

    def __init__(self, iou_threshold: float = IOU_THRESHOLD):
        self.iou_threshold = iou_threshold
        self.scores: list[np.ndarray] = []
        self.tp: list[np.ndarray] = []
        self.n_gt = 0

    def add(self, gt: np.ndarray, det: np.ndarray, scores: Sequence[float]) -> None:
        """One tile: truths and detections as label images, mask stacks or :class:`RLEMasks` (both, or neither),
        one score per detection.

        As the Open Images challenge evaluator: a detection whose mask is empty (a label that does not occur, an
        all-zero mask, or a score without a mask) is dropped; a truth whose mask is empty is not counted; a tile
        without any truth is not evaluated (its detections are dropped)."""
        if isinstance(gt, RLEMasks) != isinstance(det, RLEMasks):
            raise TypeError("truths and detections are RLEMasks both, or neither")
        if not isinstance(gt, RLEMasks):
            gt, det = np.asarray(gt), np.asarray(det)
        if isinstance(gt, RLEMasks):
            n_rows = len(gt)
            gt = gt.subset(gt.areas() > 0)      # empty truth masks: ignored, not missed
            n_gt = len(gt)
        elif gt.ndim == 2:
            top = int(gt.max(initial=0))
            if gt.min(initial=0) >= 0 and top <= 1 << 20:     # labels present: a bincount, ~10x faster than unique
                present = np.flatnonzero(np.bincount(gt.ravel(), minlength=top + 1)[1:]) + 1
            else:
                present = np.unique(gt)
                present = present[present != 0]
            if len(present) and present[-1] != len(present):      # compact the truth labels 1..n
                lut = np.zeros(int(present[-1]) + 1, np.int64)
                lut[present] = np.arange(1, len(present) + 1)
                gt = lut[gt]
            n_gt = n_rows = len(present)
        else:
            n_rows = len(gt)
            if n_rows:
                gt = gt[gt.reshape(n_rows, -1).any(axis=1)]     # empty truth masks: ignored, not missed
            n_gt = len(gt)
        scores = np.asarray(scores, dtype=np.float64).ravel()
        n_det = len(det) if isinstance(det, RLEMasks) else (int(det.max(initial=0)) if det.ndim == 2 else len(det))
        if n_det > len(scores):
            raise ValueError(f"{n_det} detections but {len(scores)} scores")
        keep = _non_empty(det, len(scores)) if n_rows else np.zeros(len(scores), bool)
        ious = mask_ious(det, gt) if n_det and n_gt else np.zeros((n_det, n_gt))
        if ious.shape[0] < len(scores):       # scores without a mask (dropped below)
            ious = np.vstack([ious, np.zeros((len(scores) - ious.shape[0], n_gt))])
        self.scores.append(scores[keep])
        self.tp.append(match_tile(ious[keep], scores[keep], self.iou_threshold))
        self.n_gt += n_gt

    def score(self) -> float:
        """AP over the tiles added so far (NaN without truths, 0.0 without detections)."""
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0)
        tp = np.concatenate(self.tp) if self.tp else np.zeros(0, bool)
        return ap_from_matches(scores, tp, self.n_gt)


def average_precision(tiles: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]],
                      iou_threshold: float = IOU_THRESHOLD) -> float:
    """AP@``iou_threshold`` over tiles given as ``(truths, detections, scores)``.

    Args:
        tiles: per tile the truths and detections (label images ``(H, W)``, mask stacks ``(N, H, W)`` or
            :class:`RLEMasks`) and one score per detection.
        iou_threshold: mask IoU a match needs (inclusive).

    Returns:
        a float in [0, 1]; NaN when no tile has a (non-empty) truth; 0.0 when there are truths but no
        detections. Empty detection masks are dropped, empty truth masks are not counted, and a tile without
        truths is not evaluated (its detections are dropped), as in the Open Images challenge evaluation."""
    acc = APAccumulator(iou_threshold)
    for gt, det, scores in tiles:
        acc.add(gt, det, scores)
    return acc.score()


__all__ = ["IOU_THRESHOLD", "RLEMasks", "mask_ious", "match_tile", "ap_from_matches", "APAccumulator",
           "average_precision"]
