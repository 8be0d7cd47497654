"""The user sees the spacing (issue 33, item 4): ``predict`` and ``--dry_run`` print for every kidney the voxel
size used, where it came from (known name, ``--spacing``, the input's metadata, assumed) and the resampling
factor to the model; an assumed voxel size is a warning naming ``--spacing``; ``--spacing KIDNEY=UM`` pairs let
one Kaggle test folder hold kidneys of different voxel sizes.

Inputs are written by tifffile, SimpleITK and tensorstore (tests/helpers/hoa.py), never by this package."""
import numpy as np
import pytest
import tifffile
from helpers.hoa import mean2, write_hoa_n5

from nnunet_vasculature.cli import main
from nnunet_vasculature.demo.tiny_model import make_model_folder
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.inputs import open_prediction_inputs
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.io.input_spec import parse_input


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "model")      # 50 µm


def _test_folder(root, names=("kidney_5", "kidney_x")):
    for index, name in enumerate(names):
        images = root / "test" / name / "images"
        images.mkdir(parents=True)
        for z, plane in enumerate(np.random.default_rng(index).integers(0, 60000, (4, 24, 20), dtype=np.uint16)):
            tifffile.imwrite(images / f"{z:04d}.tif", plane)
    return root / "test"


def test_parse_spacing():
    from nnunet_vasculature.io.input_spec import parse_spacing
    assert parse_spacing(None) == (None, ())
    assert parse_spacing(["63.08"]) == (63.08, ())
    assert parse_spacing(["kidney_5=50.28", "kidney_6=63.08", "25"]) == (25.0, (("kidney_5", 50.28),
                                                                                ("kidney_6", 63.08)))
    for words, message in ((["kidney_6"], "expected UM or KIDNEY=UM"), (["1", "2"], "one plain voxel size"),
                           (["a=1", "a=2"], "given twice")):
        with pytest.raises(UserError, match=message):
            parse_spacing(words)
    spec = parse_input("hoa:x", spacing=("kidney_6=63.08", "50"))
    assert spec.spacing_for("kidney_6") == 63.08 and spec.spacing_for("kidney_5") == 50.0
    assert type(spec).from_json(spec.to_json()) == spec


def test_each_kidney_says_its_spacing(tmp_path, model):
    test = _test_folder(tmp_path)
    options = PredictionOptions.of(model, tta_scale=1.0)
    with pytest.raises(UserError, match=r"unknown voxel size for 'kidney_x'; pass --spacing UM \(or --spacing "
                                        r"kidney_x=UM\)"):
        open_prediction_inputs(test, options, log=None)
    lines = []
    sources = open_prediction_inputs(test, options, ("kidney_x=63.08",), log=lines.append)
    assert [s.spacing for s in sources] == [(50.28,) * 3, (63.08,) * 3]
    assert lines == ["kidney_5: voxel size 50.28 µm (known name), model 50 µm: resampled x1.006",
                     "kidney_x: voxel size 63.08 µm (--spacing), model 50 µm: resampled x1.262"]
    with pytest.raises(UserError, match=r"--spacing kidney_6=\.\.\.: .* holds no volume 'kidney_6' \(it holds "
                                        r"kidney_5, kidney_x\)"):
        open_prediction_inputs(test, options, ("kidney_6=63.08", "kidney_x=63.08"), log=None)
    lines.clear()
    open_prediction_inputs(test, PredictionOptions.of(model, tta_scale=2.0), ("kidney_x=25",), log=lines.append)
    assert lines[1] == "kidney_x: voxel size 25 µm (--spacing), model 25 µm: not resampled"


def test_metadata_and_assumed_spacing(tmp_path, model):
    import SimpleITK as sitk
    options = PredictionOptions.of(model)
    volume = np.random.default_rng(0).integers(1, 60000, (16, 24, 20), dtype=np.uint16)
    store = write_hoa_n5(tmp_path / "k_n5", [volume, mean2(volume)], 25.0, block=(8, 8, 8))
    lines = []
    open_prediction_inputs(str(store), options, log=lines.append)
    assert lines[-1] == "k_n5: voxel size 50 µm (the input's metadata), model 50 µm: not resampled"
    image = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(image))        # no spacing: the header's default 1
    lines.clear()
    open_prediction_inputs(str(image), options, log=lines.append)
    assert lines == ["warning: case: voxel size 1 µm (assumed), model 50 µm: resampled x0.02; nothing in the input "
                     "says its voxel size: pass --spacing UM (or --spacing case=UM)"]
    lines.clear()
    open_prediction_inputs(str(image), options, ("case=40",), log=lines.append)
    assert lines == ["case: voxel size 40 µm (--spacing), model 50 µm: resampled x0.8"]


def test_predict_and_dry_run_print_it(tmp_path, model, capsys):
    test = _test_folder(tmp_path)
    args = ["-m", str(model), "-device", "cpu", "--disable_tta"]
    assert main(["predict", "-i", str(test), "--spacing", "kidney_x=63.08", "--dry_run", *args]) == 0
    out = capsys.readouterr().out
    assert "kidney_5: voxel size 50.28 µm (known name), model 50 µm: resampled x1.006\n" in out
    assert "kidney_x: voxel size 63.08 µm (--spacing), model 50 µm: resampled x1.262\n" in out
    assert main(["predict", "-i", str(test), "--spacing", "kidney_x=63.08", "-o", str(tmp_path / "p.zarr"),
                 *args]) == 0
    out = capsys.readouterr().out
    assert "kidney_x: voxel size 63.08 µm (--spacing), model 50 µm: resampled x1.262\n" in out
    for value in ("inf", "1e-300", "1e6"):
        assert main(["predict", "-i", str(test), "--spacing", value, "--dry_run", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --spacing {value}: the voxel size must be between 0.1 and 10000 µm"]
