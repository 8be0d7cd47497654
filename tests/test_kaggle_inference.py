"""The Kaggle inference script: on a Python that has only torch and torchvision it installs the bundle's wheels,
the model, predicts every test kidney and writes the submission that `predict` + `submit` write in the full
environment, row for row; its budget estimate warns when the budget is at risk."""
import csv
import json
import subprocess
import sys

import pytest
import tifffile
from helpers.bundle import isolated_env, needs_wheelhouse, shared_bundle, torch_only_python
from helpers.model import make_model_folder

from nnunet_vasculature.cli import main
from nnunet_vasculature.export import bundle, kaggle
from nnunet_vasculature.export.model_zip import export_model

MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"
SENNET_PP = {"competition": "sennet", "threshold": 0.45, "threshold_u8": 115, "min_component_voxels": 4,
             "closing_radius": 0, "threshold_mode": "probability"}


def rows(path):
    with open(path, newline="") as f:
        return [tuple(r) for r in csv.reader(f)]


def exported_model(root, with_pp=True):
    folder = make_model_folder(root / "results" / "Dataset999_Tiny" / MODEL, folds=(0,))
    pp = root / "postprocessing.json"
    pp.write_text(json.dumps(SENNET_PP))
    out = root / ("model.zip" if with_pp else "model-no-pp.zip")
    export_model(folder, ["0"], out, postprocessing=pp if with_pp else None)
    return folder, pp, out


@pytest.mark.slow
@needs_wheelhouse
def test_script_on_torch_only_python_matches_predict_and_submit(tmp_path_factory, kaggle_small):
    wheels = shared_bundle(tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("kaggle-run")
    folder, pp, model_zip = exported_model(work)
    # the full environment, as a user runs it
    assert main(["predict", "-i", str(kaggle_small / "test"), "-o", str(work / "full.zarr"), "-m", str(folder),
                 "-f", "0", "-device", "cpu"]) == 0
    assert main(["submit", "-i", str(work / "full.zarr"), "-pp", str(pp), "-o", str(work / "full.csv"),
                 "--sample", str(kaggle_small / "sample_submission.csv")]) == 0
    # the notebook's situation: torch and torchvision only, no internet, pip configuration invisible
    python = torch_only_python(work / "kaggle-python")
    r = subprocess.run([str(python), str(wheels / bundle.SCRIPT), "--data", str(kaggle_small), "--model",
                        str(model_zip), "--wheels", str(wheels), "--out", str(work / "submission.csv"),
                        "--device", "cpu", "--work", str(work / "scratch"), "--budget_hours", "0.00001",
                        "--poll_seconds", "0.1"],
                       env=isolated_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, cwd=work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout
    for step in ("step 1/4 wheels: installed nnunet-vasculature", "step 2/4 model: Dataset999_Tiny",
                 "predict: done in", "submit: done in", "step 4/4 submission"):
        assert step in log, log
    assert "budget is at risk" in log and "planes of kidney_5" in log, log
    expected, got = rows(work / "full.csv"), rows(work / "submission.csv")
    assert len(got) == len(rows(kaggle_small / "sample_submission.csv")) > 1
    assert any(rle != "1 0" for _, rle in expected[1:])          # not trivially empty masks
    assert got == expected


def test_script_refuses_a_model_without_postprocessing(tmp_path, kaggle_small):
    _, _, model_zip = exported_model(tmp_path, with_pp=False)
    r = subprocess.run([sys.executable, str(bundle.TEMPLATE), "--data", str(kaggle_small), "--model", str(model_zip),
                        "--out", str(tmp_path / "s.csv"), "--device", "cpu", "--work", str(tmp_path / "w")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
    assert "no postprocessing.json" in r.stderr and str(model_zip) in r.stderr
    assert not (tmp_path / "s.csv").exists()


def test_budget_weights_kidneys_by_their_voxels_in_the_model_grid(tmp_path, kaggle_small):
    folder = make_model_folder(tmp_path / MODEL, spacing=(40.0, 40.0, 40.0))
    costs = {c.name: c for c in kaggle.kidney_costs(kaggle_small / "test", folder, "3d_fullres")}
    spacing = {"kidney_5": 50.28, "kidney_6": 63.08}            # the competition's voxel sizes
    for name, um in spacing.items():
        slices = sorted((kaggle_small / "test" / name / "images").glob("*.tif"))
        height, width = tifffile.imread(slices[0]).shape
        assert costs[name].planes == len(slices)
        assert costs[name].weight == pytest.approx(height * width * (um / 40.0) ** 3)
    # 10 planes of kidney_5 in 20 s: every plane of both kidneys at that cost per model-grid voxel
    total = kaggle.estimate_seconds([costs["kidney_5"], costs["kidney_6"]], 10, 20.0)
    per_voxel = 20.0 / (10 * costs["kidney_5"].weight)
    assert total == pytest.approx(per_voxel * sum(c.planes * c.weight for c in costs.values()))


def test_budget_reads_the_spacing_pairs_the_script_passes_to_predict(tmp_path, kaggle_small):
    """A test kidney whose name predict does not know: the script's --spacing KIDNEY=UM words reach the cost
    estimate exactly as predict reads them; without them the estimate stops with predict's own one line."""
    import shutil

    from nnunet_vasculature.errors import UserError
    folder = make_model_folder(tmp_path / MODEL, spacing=(40.0, 40.0, 40.0))
    test = tmp_path / "test"
    shutil.copytree(kaggle_small / "test" / "kidney_5", test / "kidney_7")
    slices = sorted((test / "kidney_7" / "images").glob("*.tif"))
    height, width = tifffile.imread(slices[0]).shape
    costs = kaggle.kidney_costs(test, folder, "3d_fullres", ["kidney_7=80"])
    assert [c.name for c in costs] == ["kidney_7"]
    assert costs[0].weight == pytest.approx(height * width * (80 / 40.0) ** 3)
    with pytest.raises(UserError, match="--spacing"):
        kaggle.kidney_costs(test, folder, "3d_fullres")
