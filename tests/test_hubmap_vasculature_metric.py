"""HuBMAP vasculature: the submission encoding and AP@0.6 (hand-worked cases, pycocotools COCOeval)."""
import base64
import zlib

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.coco_rle import decode_mask, encode_mask, encode_masks
from nnunet_vasculature.metrics.average_precision import (
    APAccumulator,
    ap_from_matches,
    average_precision,
    mask_ious,
)


def _domain_encode(mask):
    """DOMAIN §8 recipe, written out with pycocotools directly."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)[:, :, None]))[0]
    return base64.b64encode(zlib.compress(rle["counts"], zlib.Z_BEST_COMPRESSION)).decode()


def _domain_decode(text, h, w):
    return coco_mask.decode({"size": [h, w], "counts": zlib.decompress(base64.b64decode(text))}).astype(bool)


def test_encoding_matches_domain_recipe_and_round_trips():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 53)) > 0.6
    masks[1] = False                     # an empty mask
    masks[2, :5, :7] = True              # a block touching the corner (column-major order matters)
    texts = encode_masks(masks)
    for m, t in zip(masks, texts):
        assert t == _domain_encode(m)
        assert np.array_equal(_domain_decode(t, 37, 53), m)
        assert np.array_equal(decode_mask(t, 37, 53), m)
    asym = np.zeros((3, 5), bool)
    asym[0, 1] = True                    # transposition would move this pixel
    assert np.array_equal(decode_mask(encode_mask(asym), 3, 5), asym)


def test_decode_refuses_bad_strings_with_one_line():
    good = encode_mask(np.eye(8, dtype=bool))
    with pytest.raises(UserError, match="tile-x"):
        decode_mask("not base64!!", 8, 8, where="tile-x")
    with pytest.raises(UserError, match="not 9x8"):
        decode_mask(good, 9, 8)
    with pytest.raises(UserError):
        decode_mask(base64.b64encode(zlib.compress(b"\x01\x02")).decode(), 8, 8)


def _labels(shape, boxes):
    lab = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(boxes, 1):
        lab[r0:r1, c0:c1] = k
    return lab


def test_iou_bincount_equals_dense_reference():
    rng = np.random.default_rng(1)
    det = rng.integers(0, 5, (40, 40))
    gt = rng.integers(0, 4, (40, 40))
    ref = np.zeros((4, 3))
    for i in range(1, 5):
        for j in range(1, 4):
            a, b = det == i, gt == j
            ref[i - 1, j - 1] = (a & b).sum() / (a | b).sum()
    assert np.allclose(mask_ious(det, gt), ref)
    stack_d = np.stack([det == i for i in range(1, 5)])
    assert np.allclose(mask_ious(stack_d, gt), ref)


def test_hand_worked_single_tile():
    # truths: two 10x10 squares; detections: exact (0.9, TP), far away (0.8, FP), exact second (0.7, TP)
    gt = _labels((64, 64), [(0, 10, 0, 10), (20, 30, 20, 30)])
    det = _labels((64, 64), [(0, 10, 0, 10), (40, 50, 40, 50), (20, 30, 20, 30)])
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 0.5 * 1 + 0.5 * 2/3
    assert average_precision([(gt, det, [0.9, 0.8, 0.7])]) == pytest.approx(0.5 + 1 / 3)
    # the same with the FP scored lowest: perfect
    assert average_precision([(gt, det, [0.9, 0.1, 0.7])]) == pytest.approx(1.0)


def test_iou_threshold_is_inclusive_and_duplicates_are_false_positives():
    gt = _labels((20, 20), [(0, 10, 0, 10)])                    # area 100
    d60 = _labels((20, 20), [(0, 6, 0, 10)])                    # IoU exactly 0.6 -> TP
    d59 = np.zeros((20, 20), int)
    d59.flat[np.flatnonzero(d60)[:59]] = 1                      # IoU 0.59 -> FP
    assert average_precision([(gt, d60, [0.5])]) == 1.0
    assert average_precision([(gt, d59, [0.5])]) == 0.0
    two = np.stack([gt == 1, gt == 1])                          # the same truth detected twice
    assert average_precision([(gt, two, [0.9, 0.8])]) == 1.0    # TP then FP: recall 1 at precision 1
    assert average_precision([(gt, two, [0.8, 0.9])]) == 1.0


def test_ties_keep_input_order():
    gt_a = _labels((20, 20), [(0, 10, 0, 10)])
    fp = _labels((20, 20), [(12, 18, 12, 18)])
    tp = gt_a.copy()
    # equal scores across tiles: tile order decides (FP first -> precision 1/2 at recall 1)
    gt_b = _labels((20, 20), [(0, 6, 0, 6)])       # a tile with a truth that the FP misses (a tile without
    # truths is not evaluated, as in the Open Images challenge evaluation)
    assert average_precision([(gt_b, fp, [0.5]), (gt_a, tp, [0.5])]) == pytest.approx(0.25)
    assert average_precision([(gt_a, tp, [0.5]), (gt_b, fp, [0.5])]) == pytest.approx(0.5)
    # equal scores within a tile, both on the same truth: the first in input order is the TP
    acc = APAccumulator()
    acc.add(gt_a, np.stack([gt_a == 1, gt_a == 1]), [0.5, 0.5])
    assert list(acc.tp[0]) == [True, False]


def test_detection_overlapping_two_truths_is_matched_to_the_best_only():
    # overlapping truths A (rows 0-9) and B (rows 3-12) as a stack; detection 1 = B exactly (TP);
    # detection 2 = rows 2-11: IoU with B 0.8 (taken) and with A 0.64 (>= 0.6, free) -> FP here
    gt = np.zeros((2, 20, 10), bool)
    gt[0, 0:10], gt[1, 3:13] = True, True
    det = np.zeros((2, 20, 10), bool)
    det[0, 3:13], det[1, 2:12] = True, True
    ious = mask_ious(det, gt)
    assert ious[1, 1] > ious[1, 0] >= 0.6
    acc = APAccumulator()
    acc.add(gt, det, [0.9, 0.8])
    assert list(acc.tp[0]) == [True, False]
    assert acc.score() == pytest.approx(0.5)          # precision 1 at recall 1/2, never reaches recall 1


def test_empty_tiles_no_detections_no_truths():
    gt = _labels((16, 16), [(0, 8, 0, 8)])
    empty = np.zeros((16, 16), int)
    base = average_precision([(gt, gt, [0.7])])
    assert base == 1.0
    assert average_precision([(empty, empty, []), (gt, gt, [0.7]), (empty, empty, [])]) == base
    assert average_precision([(gt, empty, [])]) == 0.0                        # truths, no detections
    assert np.isnan(average_precision([(empty, gt, [0.7])]))                  # detections, no truths
    assert np.isnan(average_precision([]))
    assert average_precision([(empty, gt, [0.9]), (gt, gt, [0.7])]) == 1.0    # a tile without truths: not evaluated
    assert ap_from_matches(np.array([0.3]), np.array([True]), 2) == 0.5


def _coco_eval(tiles):
    """pycocotools COCOeval, segm, one class, IoU 0.6 only, area 'all', maxDets large."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, anns, dets = [], [], []
    for i, (gt, det, scores) in enumerate(tiles):
        h, w = gt.shape
        images.append({"id": i, "height": h, "width": w})
        for k in range(1, gt.max() + 1):
            rle = coco_mask.encode(np.asfortranarray((gt == k).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": rle,
                         "area": float((gt == k).sum()), "bbox": list(coco_mask.toBbox(rle)), "iscrowd": 0})
        for k, s in enumerate(scores, 1):
            rle = coco_mask.encode(np.asfortranarray((det == k).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(s)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "blood_vessel"}]}
    coco.createIndex()
    e = COCOeval(coco, coco.loadRes(dets), "segm")
    e.params.iouThrs = np.array([0.6])
    e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = [[0, 1e10]], ["all"], [10000]
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        e.evaluate()
        e.accumulate()
    return e


def _random_tiles(seed, n=12):
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        gt = np.zeros((48, 48), np.int32)
        det = np.zeros((48, 48), np.int32)
        scores = []
        for k in range(rng.integers(1, 4)):                   # disjoint truths on a grid (COCO counts FPs on
            # tiles without truths; the Open Images evaluation does not evaluate such tiles)
            r, c = divmod(k, 2)
            gt[r * 24 + 2:r * 24 + 14, c * 24 + 2:c * 24 + 14] = k + 1
            if rng.random() < 0.8:                             # a shifted detection (IoU 0.2 .. 1)
                s = int(rng.integers(0, 6))
                det[r * 24 + 2 + s:r * 24 + 14 + s, c * 24 + 2:c * 24 + 14] = len(scores) + 1
                scores.append(float(rng.random()))
        if rng.random() < 0.5:                                 # a false positive elsewhere
            det[40:46, 40:46] = len(scores) + 1
            scores.append(float(rng.random()))
        tiles.append((gt, det, scores))
    return tiles


def _coco_101(scores, tp, n_gt):
    """COCO's 101-point interpolation (cocoeval.accumulate), applied to our pooled TP flags."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    hits = np.asarray(tp)[order]
    ctp = np.cumsum(hits)
    rc, pr = ctp / n_gt, list(ctp / np.arange(1, len(hits) + 1))
    for i in range(len(pr) - 1, 0, -1):
        pr[i - 1] = max(pr[i - 1], pr[i])
    q = np.zeros(101)
    idx = np.searchsorted(rc, np.linspace(0, 1, 101), side="left")
    for ri, pi in enumerate(idx):
        if pi < len(pr):
            q[ri] = pr[pi]
    return q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_cocoeval_where_definitions_agree(seed):
    tiles = _random_tiles(seed)
    acc = APAccumulator()
    for t in tiles:
        acc.add(*t)
    e = _coco_eval(tiles)
    # same TP/FP decision for every detection (disjoint truths: best truth == best unmatched truth)
    coco_tp = {}
    for ev in e.evalImgs:
        if ev is not None:
            for d, m in zip(ev["dtIds"], ev["dtMatches"][0]):
                coco_tp[d] = m > 0
    ours = np.concatenate(acc.tp)
    assert len(coco_tp) == len(ours) and list(ours) == [coco_tp[k] for k in sorted(coco_tp)]
    # same pooled curve: COCO's 101-point precision equals the curve of our matches sampled the same way
    scores = np.concatenate(acc.scores)
    assert np.allclose(e.eval["precision"][0, :, 0, 0, 0], _coco_101(scores, ours, acc.n_gt))
    # ...but the AP differs by construction (all-point vs 101-point interpolation)
    ap_all = acc.score()
    assert 0 < ap_all < 1
    assert ap_all != pytest.approx(float(np.mean(e.eval["precision"][0, :, 0, 0, 0])), abs=1e-9)


def test_cocoeval_agrees_on_perfect_and_differs_on_overlapping_truths():
    tiles = _random_tiles(5)
    perfect = [(gt, gt, [0.5] * int(gt.max())) for gt, _, _ in tiles]
    assert average_precision(perfect) == 1.0
    assert np.mean(_coco_eval(perfect).eval["precision"][0, :, 0, 0, 0]) == pytest.approx(1.0)
    # overlapping truths (label image cannot hold them: check the matching through COCO's evalImgs instead)
    gt = np.zeros((2, 20, 10), bool)
    gt[0, 0:10], gt[1, 3:13] = True, True
    det = np.zeros((2, 20, 10), bool)
    det[0, 3:13], det[1, 2:12] = True, True
    acc = APAccumulator()
    acc.add(gt, det, [0.9, 0.8])
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    enc = coco_mask.encode(np.asfortranarray(np.moveaxis(gt, 0, -1).astype(np.uint8)))
    dets = coco_mask.encode(np.asfortranarray(np.moveaxis(det, 0, -1).astype(np.uint8)))
    for r in list(enc) + list(dets):
        r["counts"] = r["counts"].decode()
    coco = COCO()
    coco.dataset = {"images": [{"id": 0, "height": 20, "width": 10}], "categories": [{"id": 1}],
                    "annotations": [{"id": k + 1, "image_id": 0, "category_id": 1, "segmentation": r, "iscrowd": 0,
                                     "area": float(coco_mask.area(r)), "bbox": list(coco_mask.toBbox(r))}
                                    for k, r in enumerate(enc)]}
    coco.createIndex()
    e = COCOeval(coco, coco.loadRes([{"image_id": 0, "category_id": 1, "segmentation": r, "score": s}
                                     for r, s in zip(dets, [0.9, 0.8])]), "segm")
    e.params.iouThrs, e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = np.array([0.6]), [[0, 1e10]], \
        ["all"], [100]
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        e.evaluate()
        e.accumulate()
    assert list(e.evalImgs[0]["dtMatches"][0] > 0) == [True, True]       # COCO: the second one takes truth A
    assert list(acc.tp[0]) == [True, False]                              # OpenImages: only its best truth B
    assert np.mean(e.eval["precision"][0, :, 0, 0, 0]) == pytest.approx(1.0)
    assert acc.score() == pytest.approx(0.5)


def test_all_point_interpolation_uses_the_best_precision_to_the_right():
    # TP FP FP TP TP, 3 truths: precision 1, 1/2, 1/3, 1/2, 3/5 at recall 1/3, 1/3, 1/3, 2/3, 1;
    # interpolated: 1 at recall 1/3, max(1/2, 3/5) at 2/3, 3/5 at 1 -> (1 + 0.6 + 0.6) / 3
    tp = np.array([True, False, False, True, True])
    assert ap_from_matches(np.linspace(1, 0.5, 5), tp, 3) == pytest.approx(2.2 / 3)


def test_truth_label_image_with_gaps_scores_as_its_mask_stack():
    """Truth labels need not be 1..n (e.g. 3, 17, 29): same AP as the stack of the same masks."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        gt, det = np.zeros((40, 40), np.int32), np.zeros((40, 40), np.int32)
        for k, lab in enumerate(rng.choice(np.arange(1, 30), 4, replace=False), 1):
            y, x = rng.integers(0, 30, 2)
            gt[y:y + 8, x:x + 8] = lab
            det[y + rng.integers(0, 4):y + 8, x:x + 8] = k
        stack = np.stack([gt == v for v in np.unique(gt)[1:]])
        scores = rng.random(4)
        assert average_precision([(gt, det, scores)]) == average_precision([(stack, det, scores)])
