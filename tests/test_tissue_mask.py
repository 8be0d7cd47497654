"""The tissue mask (inference/tissue.py): tiles wholly outside the dilated mask are not run, the probabilities inside
the undilated mask are bitwise those of a run without it, and the mask fails safe where no medium is seen."""
import math

import numpy as np
import pytest
import torch
from helpers.model import make_model_folder

from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunet_vasculature.inference.tissue import TissueMask, count_tiles, measure_tiles, tiles_to_run
from nnunet_vasculature.io.volume_source import VolumeSource

SPACING = (50.0, 50.0, 50.0)
MODEL_SPACING = (63.08, 63.08, 63.08)     # resampled both ways: the back-resampling's support is exercised
SHAPE = (96, 192, 192)
TISSUE = ((0, 20), (0, 40), (0, 40))   # the sample: a box of tissue in a corner, mounting medium on three sides


def _volume(shape=SHAPE, tissue=TISSUE, seed=0):
    """Mounting medium (grey 2500, noise 900) with a textured block of tissue (14000 ± 2000), uint16 values."""
    rng = np.random.default_rng(seed)
    img = 2500 + rng.normal(0, 900, shape)
    box = tuple(slice(a, b) for a, b in tissue)
    img[box] = 14000 + rng.normal(0, 2000, img[box].shape)
    return np.clip(img, 0, 65535).astype(np.uint16).astype(np.float32)


def _src(img):
    return VolumeSource("v", img.shape, SPACING, [str(i) for i in range(img.shape[0])],
                        [(0, img.shape[0], lambda a, b: img[a:b])])


def _run(predictor, img, start=0, end=None):
    """(probabilities of planes [start, end), network passes counted by the progress callback)."""
    out, passes = {}, [0]

    def sink(z, planes):
        for i, plane in enumerate(planes):
            out[z + i] = plane

    def progress(k):
        passes[0] += k
    predictor.predict(_src(img), sink, start, progress=progress, end=end)
    return np.stack([out[z] for z in sorted(out)]), passes[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    folder = make_model_folder(tmp_path_factory.mktemp("tissue") / "m", spacing=MODEL_SPACING)
    img = _volume()
    predictors = {on: StreamingPredictor(PredictionOptions.of(folder, [0], tta=False, tissue_mask=on),
                                                      torch.device("cpu")) for on in (False, True)}
    results = {on: _run(p, img) for on, p in predictors.items()}
    return img, predictors, results


def _tile_boxes(geometry, model_axis):
    """Input-voxel box [first, end) of each tile along the input axis of ``model_axis`` (outward rounding)."""
    scale = geometry.crop_shape[model_axis] / geometry.model_shape[model_axis]
    start = geometry.crop_box[geometry.transpose_forward[model_axis]][0]
    pad, patch = geometry.pad_before[model_axis], geometry.patch[model_axis]
    return [(start + math.floor((s - pad) * scale), start + math.ceil((s - pad + patch) * scale))
            for s in geometry.tile_starts[model_axis]]


def test_tiles_outside_the_dilated_mask_are_skipped_and_counted(runs):
    img, predictors, results = runs
    predictor = predictors[True]
    (_, all_passes), (_, passes) = results[False], results[True]
    geometry = predictor.geometry(_src(img), predictor.scan(_src(img))[0])
    mask = predictor.tissue_mask(_src(img))
    run = tiles_to_run(geometry, mask)
    count = predictor.tile_count
    assert all_passes == predictors[False].tile_count.tiles == run.size == count.tiles
    assert passes == run.sum() == count.run and count.skipped == run.size - run.sum() > 0
    assert count_tiles(geometry, mask) == count == measure_tiles(_src(img), geometry, MODEL_SPACING)   # dry run
    assert "skipped" in count.describe()
    # conservative: every tile whose input box meets the tissue widened by one patch runs; useful: a tile farther
    # than one patch and two cells from the tissue does not (per axis, since the tissue is a box)
    for axis in range(3):
        patch = geometry.patch[axis] * geometry.crop_shape[axis] / geometry.model_shape[axis]
        lo, hi = TISSUE[axis]
        boxes = _tile_boxes(geometry, axis)
        must = [b > lo - patch and a < hi + patch for a, b in boxes]
        far = patch + 2 * mask.stride[axis] + 1
        may = [b > lo - far and a < hi + far for a, b in boxes]
        ran = run.any(axis=tuple(i for i in range(3) if i != axis))
        assert all(ran[must]) and not any(ran[~np.array(may)]), (axis, ran, must, may)
        assert not all(ran)          # the volume has more than a patch of medium along every axis


def test_probabilities_inside_the_undilated_mask_equal_the_full_run(runs):
    img, predictors, results = runs
    (full, _), (masked, _) = results[False], results[True]
    inside = predictors[True].tissue_mask(_src(img)).voxels()
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(masked[inside], full[inside])
    box = tuple(slice(a, b) for a, b in TISSUE)
    assert inside[box].all()                       # the tissue is found
    assert (masked[-8:] == 0).all() and (masked[:, :, -8:] == 0).all()   # far medium: background, not NaN
    assert not np.isnan(masked).any()


def test_slabs_skip_the_same_tiles_as_one_run(runs):
    """``--workers`` slabs measure the mask themselves (deterministic) and give the whole run's planes."""
    img, predictors, results = runs
    masked, _ = results[True]
    slabs = [_run(predictors[True], img, a, b)[0] for a, b in ((0, 44), (44, 96))]
    np.testing.assert_array_equal(np.concatenate(slabs), masked)


def test_a_field_full_of_tissue_skips_nothing():
    """Where no uniform medium is seen, Otsu would cut the tissue's own grey values in two: no threshold is used."""
    from scipy import ndimage as ndi
    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.random((64, 128, 128)), 6)
    img = (14000 + (img - img.mean()) / img.std() * 2000 + rng.normal(0, 900, img.shape)).astype(np.float32)
    mask = TissueMask.measure(_src(img), (4, 8, 8))
    assert mask.threshold is None and mask.cells.all()


def test_a_dark_lumen_inside_the_sample_stays_tissue():
    shape, wall = (48, 160, 160), 8
    img = _volume(shape, ((0, 48), (16, 144), (16, 144)))
    img[:, 16 + wall:144 - wall, 16 + wall:144 - wall] = _volume(shape, ((0, 0), (0, 0), (0, 0)), seed=1)[
        :, 16 + wall:144 - wall, 16 + wall:144 - wall]         # medium-like grey inside a tissue tube ...
    img[:wall], img[-wall:] = _volume(shape, ((0, 48), (16, 144), (16, 144)), seed=2)[:wall], \
        _volume(shape, ((0, 48), (16, 144), (16, 144)), seed=3)[-wall:]     # ... closed at both ends
    mask = TissueMask.measure(_src(img), (4, 8, 8))
    assert mask.threshold is not None
    assert mask.voxels()[:, 80, 80].all() and not mask.voxels()[:, 4, 4].any()


def test_zeros_are_no_data_not_tissue():
    """Zeros (outside the reconstructed disc) are no data, as for nnU-Net's crop_to_nonzero: a cell is the mean of
    its non-zero voxels, so tissue at the disc's edge (here sharing a cell with zeros) is not averaged away."""
    img = _volume((32, 96, 96), ((8, 24), (40, 56), (56, 80)))
    img[:, :, :60] = 0
    voxels = TissueMask.measure(_src(img), (4, 8, 8)).voxels()
    assert not voxels[:, :, :56].any() and voxels[8:24, 40:56, 60:80].all()
    assert not voxels[:, :24, 56:].any()          # the medium is still told from the tissue


def test_the_option_is_recorded_only_when_on():
    on = PredictionOptions.of("m", [0], tissue_mask=True)
    assert on.to_json()["tissue_mask"] is True and PredictionOptions.from_json(on.to_json()) == on
    off = PredictionOptions.of("m", [0])
    assert "tissue_mask" not in off.to_json() and PredictionOptions.from_json(off.to_json()).tissue_mask is False


def test_cli_dry_run_and_predict_report_the_skipped_tiles(tmp_path, capsys):
    """`predict --tissue_mask`: --dry_run counts the tiles that would run with the same mask as the run itself, and
    the run's log line says how many it skipped; the output equals a run without the mask inside the tissue."""
    import zarr
    from helpers.predict import _kaggle_kidney

    from nnunet_vasculature.cli import main
    folder = make_model_folder(tmp_path / "m", spacing=MODEL_SPACING)
    kidney = _kaggle_kidney(tmp_path / "kaggle", _volume(seed=2))
    base = ["predict", "-i", str(kidney), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main([*base, "--dry_run", "--tissue_mask"]) == 0
    dry = capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "masked.zarr"), "--tissue_mask"]) == 0
    run = capsys.readouterr().out
    line = next(x for x in run.splitlines() if "tissue mask" in x)
    assert line.split(": ", 1)[1] in dry, (line, dry)
    assert "skipped" in line and not line.split(": ", 1)[1].startswith("tissue mask: 0 of")
    assert main([*base, "-o", str(tmp_path / "full.zarr")]) == 0
    masked = zarr.open_group(str(tmp_path / "masked.zarr"))["kidney_5"][:]
    full = zarr.open_group(str(tmp_path / "full.zarr"))["kidney_5"][:]
    box = tuple(slice(a, b) for a, b in TISSUE)
    np.testing.assert_array_equal(masked[box], full[box])
