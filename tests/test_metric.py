"""Surface Dice against PyPI surface-distance (DeepMind's code, wrapped by the official metric)."""
from pathlib import Path

import numpy as np
import pytest
import surface_distance as sd
from scipy import ndimage as ndi
from surface_distance import lookup_tables

from nnunet_vasculature.io.rle import rle_decode, rle_encode
from nnunet_vasculature.metrics import area_table
from nnunet_vasculature.metrics.area_table import AREA
from nnunet_vasculature.metrics.surface_dice import surface_dice, surface_dice_sweep

if "Inf" not in np.__dict__:   # surface-distance 0.1 predates NumPy 2 (uses np.Inf for an empty surface)
    np.Inf = np.inf


def reference(pred, gt):
    d = sd.compute_surface_distances(gt.astype(bool), pred.astype(bool), (1, 1, 1))
    return sd.compute_surface_dice_at_tolerance(d, 0)


def test_area_table_is_deepminds():
    np.testing.assert_array_equal(AREA, lookup_tables.create_table_neighbour_code_to_surface_area((1, 1, 1)))


def test_area_table_generator_rewrites_the_table_and_keeps_the_rest(tmp_path):
    """`python -m nnunet_vasculature.metrics.area_table` writes the module it lives in: on a copy with a wrong
    value, only the table changes, back to exactly the text in the package."""
    source = Path(area_table.__file__).read_text()
    broken = source.replace("    0.0, 0.21650635094610965,", "    9.0, 0.21650635094610965,", 1)
    assert broken != source
    copy = tmp_path / "area_table.py"
    copy.write_text(broken)
    assert area_table.write_table(copy) == copy
    assert copy.read_text() == source


def _volumes(rng):
    shapes = [(1, 9, 7), (5, 6, 7), (13, 3, 20), (8, 17, 1), (2, 2, 2), (20, 21, 22)]
    for shape in shapes:
        for kind in ("noise", "blobs", "border"):
            if kind == "noise":
                a, b = rng.random(shape) > rng.uniform(0.3, 0.9), rng.random(shape) > rng.uniform(0.3, 0.9)
            elif kind == "blobs":
                f = ndi.gaussian_filter(rng.random(shape), 1.5)
                a, b = f > np.quantile(f, 0.7), ndi.shift(f, (0.5, 0.3, -0.4), order=1) > np.quantile(f, 0.72)
            else:   # structures touching every border
                a = np.ones(shape, bool)
                a[tuple(slice(1, -1) if s > 2 else slice(0, 1) for s in shape)] = False
                b = rng.random(shape) > 0.2
            yield a, b


def test_matches_surface_distance_many_volumes():
    rng = np.random.default_rng(42)
    n = 0
    for a, b in _volumes(rng):
        ref = reference(b, a)
        if np.isnan(ref):
            continue
        for block in (1, 3, 64):
            assert abs(surface_dice(b, a, block=block) - ref) <= 1e-9
        n += 1
    assert n >= 15


def test_empty_inputs():
    z = np.zeros((4, 5, 6), bool)
    one = z.copy()
    one[2, 2, 2] = True
    assert np.isnan(surface_dice(z, z))
    assert surface_dice(z, z, empty_score=1.0) == 1.0
    assert surface_dice(z, one) == 0.0 and surface_dice(one, z) == 0.0
    assert reference(z, one) == 0.0


def test_sweep_equals_every_threshold():
    rng = np.random.default_rng(0)
    for shape, block in [((9, 10, 11), 4), ((3, 4, 5), 16), ((1, 6, 4), 1)]:
        p = (ndi.gaussian_filter(rng.random(shape), 1) * 255 * 2 - 100).clip(0, 255).astype(np.uint8)
        p[rng.random(shape) > 0.9] = 255
        g = rng.random(shape) > 0.6
        sweep = surface_dice_sweep(p, g, block=block)
        assert sweep.shape == (256,)
        for k in range(256):
            assert abs(sweep[k] - surface_dice(p >= k, g, empty_score=0.0)) <= 1e-12, k
        # and against the reference at a few thresholds
        for k in (0, 60, 128, 200):
            ref = reference(p >= k, g)
            assert abs(sweep[k] - (0.0 if np.isnan(ref) else ref)) <= 1e-9


def test_sweep_empty_prediction_is_zero():
    g = np.zeros((3, 4, 5), bool)
    g[0, 0, 0] = True        # shares its corner cube with the surface of the all-in prediction at k = 0
    sweep = surface_dice_sweep(np.zeros((3, 4, 5), np.uint8), g)
    assert sweep[1:].max() == 0.0 and sweep[0] > 0.0      # k=0 predicts everything


def test_slice_folders_through_the_io_layer(tmp_path):
    """The metric takes z-sliceable volumes: label folders opened by io.volumes stream into it, while
    paths and file lists are refused (reading files is the caller's job)."""
    import tifffile

    from nnunet_vasculature.io.volumes import open_labels
    rng = np.random.default_rng(3)
    a, b = rng.random((6, 8, 9)) > 0.5, rng.random((6, 8, 9)) > 0.5
    for name, vol in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        for i in range(6):
            tifffile.imwrite(tmp_path / name / f"{i:04d}.tif", vol[i].astype(np.uint8) * 255)
    got = surface_dice(open_labels(tmp_path / "b"), open_labels(tmp_path / "a"), block=2)
    assert abs(got - reference(b, a)) <= 1e-9
    with pytest.raises(TypeError, match="open files with"):
        surface_dice([tmp_path / "b" / "0000.tif"], a)


def test_rle_roundtrip_and_convention():
    rng = np.random.default_rng(1)
    m = np.zeros((3, 4), np.uint8)
    m[0, 1:3] = 1
    m[2, 3] = 1
    assert rle_encode(m) == "2 2 12 1"
    assert rle_encode(np.zeros((5, 5))) == "1 0"
    for shape in [(1, 1), (7, 9), (64, 33)]:
        for p in (0.0, 0.3, 1.0):
            x = (rng.random(shape) < p).astype(np.uint8)
            np.testing.assert_array_equal(rle_decode(rle_encode(x), shape), x)


def _plain_rle(mask):
    runs, start = [], None
    flat = mask.reshape(-1)
    for i, v in enumerate(flat):
        if v and start is None:
            start = i
        if not v and start is not None:
            runs += [start + 1, i - start]
            start = None
    if start is not None:
        runs += [start + 1, len(flat) - start]
    return " ".join(map(str, runs)) or "1 0"


def test_rle_matches_a_plain_loop():
    rng = np.random.default_rng(5)
    for _ in range(20):
        x = rng.random((13, 17)) < rng.random()
        assert rle_encode(x) == _plain_rle(x)


@pytest.mark.parametrize("bad,msg", [("1 2 3", "odd"), ("0 3", "below 1"), ("5 100", "beyond"), ("a b", "non-integer")])
def test_rle_decode_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        rle_decode(bad, (4, 5))
