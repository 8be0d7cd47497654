"""HuBMAP vasculature AP@0.6 against the Open Images challenge evaluation code it is built on (TF Object Detection
API, vendored in tests/reference/oid_challenge_evaluation.py with its Apache-2.0 licence)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from reference.oid_challenge_evaluation import challenge_average_precision
from scipy import ndimage

from nnunet_vasculature.metrics.average_precision import average_precision


def blob(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2) <= radius ** 2


def random_tiles(seed: int, n_tiles: int = 6, size: int = 40) -> list:
    """Tiles of truth blobs and detections: some true (jittered truths), some false, some empty masks, empty
    truths, tiles without truths; distinct scores (the tie order is a documented difference)."""
    rng = np.random.default_rng(seed)
    tiles, scores_used = [], rng.permutation(1000)[: 40 * n_tiles] / 1000 + 0.0005
    k = 0
    for t in range(n_tiles):
        n_gt = 0 if t == 0 else int(rng.integers(1, 5))
        truths = [blob((size, size), tuple(rng.integers(5, size - 5, 2)), rng.uniform(2, 6)) for _ in range(n_gt)]
        if n_gt and rng.random() < 0.5:
            truths.append(np.zeros((size, size), bool))                 # a truth with an empty mask
        dets = []
        for g in truths:
            if g.any() and rng.random() < 0.8:
                d = np.roll(g, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
                if rng.random() < 0.3:
                    d = ndimage.binary_dilation(d, iterations=2)           # may fall below IoU 0.6
                dets.append(d)
        for _ in range(int(rng.integers(0, 3))):
            dets.append(blob((size, size), tuple(rng.integers(5, size - 5, 2)), rng.uniform(1, 4)))
        for _ in range(int(rng.integers(0, 2))):
            dets.append(np.zeros((size, size), bool))                   # a detection with an empty mask
        order = rng.permutation(len(dets))
        dets = [dets[i] for i in order]
        scores = scores_used[k:k + len(dets)]
        k += len(dets)
        gt_stack = np.array(truths, dtype=np.uint8).reshape(len(truths), size, size)
        det_stack = np.array(dets, dtype=np.uint8).reshape(len(dets), size, size)
        tiles.append((gt_stack, det_stack, scores))
    return tiles


@pytest.mark.parametrize("seed", range(12))
def test_equals_the_open_images_challenge_evaluation(seed):
    tiles = random_tiles(seed)
    ref = challenge_average_precision(tiles, 0.6)
    ours = average_precision(tiles, 0.6)
    assert (math.isnan(ref) and math.isnan(ours)) or ours == pytest.approx(ref, abs=1e-12)


def test_detection_with_an_empty_mask_is_dropped_not_a_false_positive():
    g = blob((20, 20), (10, 10), 4)[None].astype(np.uint8)
    dets = np.stack([np.zeros((20, 20), np.uint8), g[0]])            # the empty one has the higher score
    tiles = [(g, dets, [0.9, 0.8])]
    assert challenge_average_precision(tiles) == 1.0
    assert average_precision(tiles) == 1.0
    # the same through a label image: label 1 does not occur, label 2 is the truth
    assert average_precision([(g[0].astype(int), g[0].astype(int) * 2, [0.9, 0.8])]) == 1.0


def test_truth_with_an_empty_mask_is_ignored_not_a_miss():
    g = blob((20, 20), (10, 10), 4).astype(np.uint8)
    gts = np.stack([g, np.zeros_like(g)])
    tiles = [(gts, g[None], [0.7])]
    assert challenge_average_precision(tiles) == 1.0
    assert average_precision(tiles) == 1.0


def test_tile_without_truths_is_not_evaluated():
    g = blob((20, 20), (10, 10), 4).astype(np.uint8)
    fp = blob((20, 20), (4, 4), 2).astype(np.uint8)
    no_truth = np.zeros((0, 20, 20), np.uint8)
    tiles = [(no_truth, fp[None], [0.9]), (g[None], g[None], [0.7])]
    assert challenge_average_precision(tiles) == 1.0
    assert average_precision(tiles) == 1.0
    # but a tile whose only truth has an empty mask is evaluated: its detection is a false positive
    tiles = [(np.zeros((1, 20, 20), np.uint8), fp[None], [0.9]), (g[None], g[None], [0.7])]
    assert challenge_average_precision(tiles) == 0.5
    assert average_precision(tiles) == 0.5


def test_tie_order_is_the_documented_difference():
    """Equal scores: the reference's ``argsort(...)[::-1]`` reverses the input order of a short array, ours keeps it."""
    g = blob((20, 20), (10, 10), 4).astype(np.uint8)
    fp = blob((20, 20), (3, 3), 2).astype(np.uint8)
    tiles = [(g[None], fp[None], [0.5]), (g[None], g[None], [0.5])]     # a false positive, then a true one
    assert average_precision(tiles) == pytest.approx(0.25)             # FP first: precision 1/2 at recall 1/2
    assert challenge_average_precision(tiles) == 0.5                    # TP first (order reversed)
    distinct = [(g[None], fp[None], [0.5]), (g[None], g[None], [0.49])]
    assert average_precision(distinct) == challenge_average_precision(distinct)
