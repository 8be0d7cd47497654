"""The word-parallel surface Dice accumulator (issue 36.5) counts exactly the cube pairs of a plain per-cube count:
on volumes of every width around the 8-voxel words, on block and chunk boundaries, on non-boolean inputs, on
vessel trees, and when a run starts in the middle of a volume (as the slab workers of metrics.hosts do)."""
import numpy as np
import pytest
import surface_distance as sd

from nnunet_vasculature.metrics.surface_dice import (
    SurfaceDiceAccumulator,
    _plane_codes,
    surface_dice,
    surface_dice_sweep,
)


def plain_pair_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Counts of (gt code, pred code) at gt * 256 + pred over every 2x2x2 cube of the zero-padded volumes, the code
    of a cube being DeepMind's: corner (dz, dy, dx) weighs 128 >> (4 dz + 2 dy + dx); the pair (0, 0) not counted."""
    def codes(mask):
        m = np.pad(np.asarray(mask) > 0, 1).astype(np.int64)
        d, h, w = mask.shape
        out = np.zeros((d + 1, h + 1, w + 1), np.int64)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    out += m[dz:dz + d + 1, dy:dy + h + 1, dx:dx + w + 1] << (7 - (4 * dz + 2 * dy + dx))
        return out
    hist = np.bincount((codes(gt) * 256 + codes(pred)).ravel(), minlength=65536)
    hist[0] = 0
    return hist


def accumulated(pred, gt, block) -> SurfaceDiceAccumulator:
    acc = SurfaceDiceAccumulator(gt.shape[1:])
    for z in range(0, gt.shape[0], block):
        acc.add(pred[z:z + block], gt[z:z + block])
    acc.counts()
    return acc


def test_pair_counts_equal_a_plain_count_on_varied_volumes():
    rng = np.random.default_rng(5)
    for trial in range(60):
        shape = (int(rng.integers(1, 12)), int(rng.integers(1, 20)), int(rng.integers(1, 27)))  # widths across words
        gt = rng.random(shape) < rng.uniform(0.02, 0.9)
        pred = rng.random(shape) < rng.uniform(0.02, 0.9)
        kind = trial % 4                # booleans, 0/255 bytes, signed integers (-1 is background), floats
        as_input = [lambda m: m, lambda m: m.astype(np.uint8) * 255,
                    lambda m: np.where(m, 3, -1).astype(np.int16), lambda m: m * rng.uniform(0.1, 1, m.shape)][kind]
        acc = accumulated(as_input(pred), as_input(gt), int(rng.integers(1, 9)))
        assert np.array_equal(acc.hist, plain_pair_counts(pred, gt)), (trial, shape)


def test_planes_larger_than_a_chunk_and_blocks_of_one_plane():
    rng = np.random.default_rng(6)
    shape = (9, 1000, 1001)         # 4 MiB of words hold 4 such planes: the blocks of 16 are cut into chunks
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for m in (gt, pred):
        z, y, x = (rng.integers(0, n, 3000) for n in shape)
        m[z, y, x] = True
    gt[:, -3:, :] = True                # the last rows and columns, next to the padding
    pred[:, :, -2:] = True
    want = plain_pair_counts(pred, gt)
    assert SurfaceDiceAccumulator(shape[1:]).chunk < 9
    for block in (16, 1):
        assert np.array_equal(accumulated(pred, gt, block).hist, want), block


@pytest.mark.parametrize("level", [40, 128, 220])
def test_vessel_trees_score_as_surface_distance(level):
    from benchmarks.metric import vessel_like
    gt, prob = vessel_like(52)
    pred = prob[:, :50, :45] >= level      # widths that are not whole words
    gt = gt[:, :50, :45]
    acc = accumulated(pred, gt, 16)
    assert np.array_equal(acc.hist, plain_pair_counts(pred, gt))
    reference = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, (1, 1, 1)), 0)
    assert abs(surface_dice(pred, gt) - reference) < 1e-12
    assert abs(surface_dice_sweep(prob[:, :50, :45], gt)[level] - reference) < 1e-12


def test_a_run_started_in_the_middle_adds_up_to_the_whole():
    """As surface_distances.surface_counts: the previous plane's codes set from ``_plane_codes``, halves summed, the
    sum set back as ``hist`` (metrics.hosts) gives the whole volume's counts and score."""
    rng = np.random.default_rng(7)
    gt, pred = rng.random((20, 17, 23)) < 0.3, rng.random((20, 17, 23)) < 0.25
    first = SurfaceDiceAccumulator(gt.shape[1:])
    first.add(pred[:9], gt[:9])
    second = SurfaceDiceAccumulator(gt.shape[1:])
    second.prev_p, second.prev_g = _plane_codes(pred[8:9])[-1], _plane_codes(gt[8:9])[-1]
    assert np.array_equal(second.prev_p, first.prev_p) and np.array_equal(second.prev_g, first.prev_g)
    second.add(pred[9:], gt[9:])
    second.counts()
    assert np.array_equal(first.hist + second.hist, plain_pair_counts(pred, gt))
    summed = SurfaceDiceAccumulator((1, 1))
    summed.hist, summed.closed = first.hist + second.hist, True
    assert summed.score() == surface_dice(pred, gt)


def test_sweep_on_threads_with_the_level_counts_equals_the_plain_sweep():
    """Issue 36.1: the sweep's blocks as independent tasks (each reads the plane before it), summed in block order:
    the same values bit for bit on 1 or 2 threads, and the level counts of the same read equal a plain bincount."""
    from nnunet_vasculature.metrics.surface_dice import sweep_with_levels
    rng = np.random.default_rng(8)
    for trial in range(6):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 20)), int(rng.integers(1, 20)))
        prob = (rng.random(shape) ** 3 * 255 * (rng.random(shape) < 0.5)).astype(np.uint8)
        gt = rng.random(shape) < 0.3
        block = int(rng.integers(1, 9))
        one, levels = sweep_with_levels(prob, gt, block, 1)
        two, levels_two = sweep_with_levels(prob, gt, block, 2)
        assert np.array_equal(one, two) and np.array_equal(levels, levels_two)
        assert np.array_equal(levels, np.bincount(prob.ravel(), minlength=256))
        for k in (0, 1, 100, 255):
            assert abs(one[k] - (surface_dice(prob >= k, gt, empty_score=0.0))) < 1e-12, (trial, k)
