"""Errors that used to point the wrong way: each is one line naming the real problem, exit code 2."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import zarr
from helpers.model import make_model_folder

from nnunet_vasculature.cli import main

CLI = [str(Path(sys.executable).parent / "nnunet-vasculature")]


def _run(args, **env):
    """A new interpreter: nnU-Net reads its folder variables when it is first imported."""
    import os
    r = subprocess.run(CLI + args, capture_output=True, text=True, env={**os.environ, **env})
    return r.returncode, r.stderr.strip().splitlines()


def _main(capsys, args):
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines(), out.out


def _probs(tmp_path):
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    a = g.create_array("kidney_2", shape=(4, 6, 7), dtype="uint8")
    a[:] = 200
    a.attrs.update({"kidney": "kidney_2", "slice_ids": [f"kidney_2_{z:04d}" for z in range(4)], "complete": True,
                    "source": {"tool": "predict"}})
    return tmp_path / "p.zarr"


def test_tune_on_a_kidney_folder_without_labels(tmp_path, capsys):
    images = tmp_path / "kidney_2" / "images"
    images.mkdir(parents=True)
    for z in range(4):
        tifffile.imwrite(images / f"{z:04d}.tif", np.zeros((6, 7), np.uint16))
    rc, err, _ = _main(capsys, ["tune", "-i", str(_probs(tmp_path)), "--labels", str(tmp_path / "kidney_2"),
                                "-o", str(tmp_path / "pp.json")])
    assert rc == 2 and len(err) == 1 and "images/ but no labels/" in err[0], err


def test_score_probabilities_without_pp(tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    for z in range(4):
        tifffile.imwrite(labels / f"{z:04d}.tif", np.zeros((6, 7), np.uint8))
    rc, err, _ = _main(capsys, ["score", "--labels", str(labels), "--pred", str(_probs(tmp_path) / "kidney_2")])
    assert rc == 2 and len(err) == 1 and "pass -pp" in err[0], err


def test_predict_unknown_dataset_and_untrained_trainer(tmp_path):
    results = tmp_path / "results"
    make_model_folder(results / "Dataset501_SenNet" / "VesselTransferTrainer__nnUNetPlans_Task008__3d_fullres")
    env = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(results)}
    (tmp_path / "raw").mkdir()
    (tmp_path / "pre").mkdir()
    rc, err = _run(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o.zarr"), "-d", "999"], **env)
    assert rc == 2 and len(err) == 1 and "dataset 999: not found" in err[0] and err[0].endswith(str(results)), err
    rc, err = _run(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o.zarr"), "-d", "501",
                    "-tr", "VesselScratchTrainer"], **env)
    assert rc == 2 and len(err) == 1, err
    assert "no trained model for -tr VesselScratchTrainer" in err[0]
    assert "VesselTransferTrainer__nnUNetPlans_Task008__3d_fullres" in err[0]
    assert not (tmp_path / "o.zarr").exists()


def test_help_and_env_start_without_torch():
    """`nnunet-vasculature --help` and `env` (evaluated in every shell) must not import torch/nnU-Net."""
    code = ("import sys; from nnunet_vasculature.cli import build_parser; p, _ = build_parser(); "
            "a = p.parse_args(['env']); a.func(a); "
            "print(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", (r.stdout, r.stderr)
    r = subprocess.run(CLI + ["env"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("export nnUNet_extTrainer=")


def test_apply_takes_a_store_like_tune_and_submit(tmp_path, capsys):
    store = _probs(tmp_path)
    g = zarr.open_group(str(store), mode="a")
    b = g.create_array("kidney_3", shape=(2, 6, 7), dtype="uint8")
    b[:] = 10
    b.attrs.update({"kidney": "kidney_3", "slice_ids": ["kidney_3_0000", "kidney_3_0001"], "complete": True,
                    "source": {"tool": "predict"}})
    pp = tmp_path / "pp.json"
    pp.write_text('{"threshold_u8": 128, "min_component_voxels": 0}')
    rc, err, _ = _main(capsys, ["apply", "-i", str(store), "-pp", str(pp), "-o", str(tmp_path / "masks")])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "masks" / "kidney_2").iterdir()) == [f"{z:04d}.tif" for z in range(4)]
    assert tifffile.imread(tmp_path / "masks" / "kidney_2" / "0000.tif").min() == 255        # 200 >= 128
    assert tifffile.imread(tmp_path / "masks" / "kidney_3" / "0001.tif").max() == 0          # 10 < 128


def test_trainer_setup_errors_are_one_line(tmp_path):
    """Inside stock nnUNetv2_train our trainers' set-up errors are SystemExit: one line, exit code 1."""
    code = "from nnunet_vasculature.trainers.common import demo_schedule; print(demo_schedule())"
    import os
    for value, ok in (("6x30", True), ("6by30", False), ("0x5", False)):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "nnUNet_vasculature_demo_schedule": value})
        if ok:
            assert r.returncode == 0 and r.stdout.strip() == "(6, 30)"
        else:
            err = r.stderr.strip().splitlines()
            assert r.returncode == 1 and len(err) == 1 and "expected EPOCHSxITERATIONS" in err[0], err


def test_training_with_other_plans_names_the_imported_ones(tmp_path):
    import types

    import pytest

    from nnunet_vasculature.trainers.vessel_transfer import TransferSetupError, VesselTransferTrainer
    (tmp_path / "nnUNetPlans_Task008__3d_fullres__pretrained.pth").write_bytes(b"")
    trainer = object.__new__(VesselTransferTrainer)
    trainer.plans_manager = types.SimpleNamespace(plans_name="nnUNetPlans")
    trainer.configuration_name = "3d_fullres"
    trainer.preprocessed_dataset_folder_base = str(tmp_path)
    with pytest.raises(TransferSetupError, match="plans 'nnUNetPlans' have no imported weights.*"
                                                 "pass -p nnUNetPlans_Task008"):
        trainer.load_transfer_weights()


def test_score_names_the_kidney_and_submit_validate_say_what_they_skipped(tmp_path, capsys):
    labels = tmp_path / "kidney_2" / "labels"
    labels.mkdir(parents=True)
    for z in range(4):
        tifffile.imwrite(labels / f"{z:04d}.tif", np.full((6, 7), 255, np.uint8))
    pp = tmp_path / "pp.json"
    pp.write_text('{"threshold_u8": 128, "min_component_voxels": 0}')
    rc, _, out = _main(capsys, ["score", "--labels", str(labels), "--pred", str(_probs(tmp_path) / "kidney_2"),
                                "-pp", str(pp)])
    assert rc == 0 and out.splitlines()[0].split()[0] == "kidney_2", out
    rc, _, out = _main(capsys, ["submit", "-i", str(tmp_path / "p.zarr"), "-pp", str(pp),
                                "-o", str(tmp_path / "s.csv")])
    assert rc == 0 and "not checked against a sample submission" in out, out
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\n" + "".join(f"kidney_2_{z:04d},1 0\n" for z in range(4)))
    rc, _, out = _main(capsys, ["validate", str(tmp_path / "s.csv"), "--sample", str(sample)])
    assert rc == 0 and "runs were not checked against slice sizes" in out, out
