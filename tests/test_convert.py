"""SenNet -> nnU-Net raw: checked with nnU-Net's own reader and verify_dataset_integrity."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.sennet import KNOWN_SPACING_UM
from nnunet_vasculature.io.slices import list_slices


def _stack(folder: Path) -> np.ndarray:
    return np.stack([tifffile.imread(f) for f in list_slices(folder)])


def test_convert_roundtrip_with_nnunet_reader(kaggle_small, nnunet_dirs):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    assert main(["convert", "sennet", str(kaggle_small), "-d", "501", "--chunk_slices", "20"]) == 0
    ds = nnunet_dirs["raw"] / "Dataset501_SenNet"
    verify_dataset_integrity(str(ds), num_processes=1)     # raises on any inconsistency
    meta = json.loads((ds / "sennet_cases.json").read_text())
    dj = json.loads((ds / "dataset.json").read_text())
    rw = determine_reader_writer_from_dataset_json(dj, str(ds / "imagesTr" / "kidney_2_z0000_0000.tif"))()
    assert set(meta["kidneys"]) == {"kidney_1_dense", "kidney_2", "kidney_3_sparse", "kidney_3_dense",
                                    "kidney_5", "kidney_6"}
    for name, k in meta["kidneys"].items():
        split = k["split"]
        src = kaggle_small / split / name
        img_dir = src / "images" if (src / "images").is_dir() else kaggle_small / split / "kidney_3_sparse" / "images"
        full = _stack(img_dir)
        lab_full = _stack(src / "labels") if split == "train" else None
        lab_names = [p.name for p in list_slices(src / "labels")] if split == "train" else None
        all_names = [p.name for p in list_slices(img_dir)]
        for c in k["cases"]:
            assert c["z1"] - c["z0"] <= 20
            sub = "imagesTr" if split == "train" else "imagesTs"
            img, props = rw.read_images([str(ds / sub / f"{c['case']}_0000.tif")])
            assert props["spacing"] == [KNOWN_SPACING_UM[name]] * 3
            rows = [all_names.index(f"{s}.tif") for s in c["slice_ids"]]
            np.testing.assert_array_equal(img[0], full[rows].astype(np.float32))
            if split == "train":
                seg, _ = rw.read_seg(str(ds / "labelsTr" / f"{c['case']}.tif"))
                lrows = [lab_names.index(f"{s}.tif") for s in c["slice_ids"]]
                np.testing.assert_array_equal(seg[0], (lab_full[lrows] > 0).astype(np.float32))
    # kidney_3_dense slices are not duplicated in kidney_3_sparse
    dense = {s for c in meta["kidneys"]["kidney_3_dense"]["cases"] for s in c["slice_ids"]}
    sparse = {s for c in meta["kidneys"]["kidney_3_sparse"]["cases"] for s in c["slice_ids"]}
    assert dense and sparse and not dense & sparse
    # test kidneys land in imagesTs, leave-one-kidney-out splits group kidney_3_*
    assert sorted(p.name for p in (ds / "imagesTs").glob("kidney_6_*_0000.tif"))
    splits = json.loads((nnunet_dirs["preprocessed"] / "Dataset501_SenNet" / "splits_final.json").read_text())
    assert len(splits) == 3
    for fold in splits:
        kid = {c.split("_z")[0].replace("_dense", "").replace("_sparse", "") for c in fold["val"]}
        assert len(kid) == 1 and not set(fold["train"]) & set(fold["val"])


@pytest.mark.slow
def test_plan_and_preprocess_runs(kaggle_small, nnunet_dirs):
    assert main(["convert", "sennet", "-i", str(kaggle_small), "-d", "502", "--kidneys", "kidney_1_dense",
                 "kidney_2", "kidney_6"]) == 0
    env = dict(os.environ, nnUNet_n_proc_DA="1")
    r = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", "502", "-c",
                        "3d_fullres", "-np", "1", "--verify_dataset_integrity"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    pre = nnunet_dirs["preprocessed"] / "Dataset502_SenNet"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [50.0, 50.0, 50.0]   # 63 µm kidney_6 is resampled
    cases = list((pre / "nnUNetPlans_3d_fullres").glob("kidney_1_dense_z*"))
    assert cases


def _bad(tmp_path, kaggle_small, mutate, capsys, *flags) -> tuple[int, str, Path]:
    src = tmp_path / "kaggle"
    shutil.copytree(kaggle_small, src)
    mutate(src)
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    capsys.readouterr()
    rc = main(["convert", "sennet", str(src), "-d", "503", "-o", str(raw), *flags])
    return rc, capsys.readouterr().err.strip(), raw


def _move(src, rel):
    (src / rel).unlink()


def _retype(path, dtype, scale=1.0):
    tifffile.imwrite(path, (tifffile.imread(path) * scale).astype(dtype))


@pytest.mark.parametrize("mutate,expect", [
    (lambda s: _move(s, "train/kidney_2/images/0007.tif"), "missing slice 0007"),
    (lambda s: tifffile.imwrite(s / "train/kidney_2/images/0003.tif", np.zeros((10, 10), np.uint16)),
     "0003.tif: slice is 10x10"),
    (lambda s: _move(s, "train/kidney_2/labels/0043.tif"), "44 images but 43 labels"),
    (lambda s: tifffile.imwrite(s / "train/kidney_2/labels/0005.tif", np.full((88, 96), 7, np.uint8)),
     "0005.tif: label values [7]"),
    (lambda s: (s / "train/kidney_2/images/0009.tif").write_bytes(
        (s / "train/kidney_2/images/0009.tif").read_bytes()[:300]), "0009.tif: not a readable TIFF"),
    (lambda s: (s / "train/kidney_2/images/0009.tif").write_text("hello"), "0009.tif: not a readable TIFF"),
    (lambda s: [p.unlink() for p in (s / "train/kidney_2/images").iterdir()], "no slice files"),
    # a slice of another type among uint16 ones once converted into a black (uint8) or rescaled (float) slice
    (lambda s: _retype(s / "train/kidney_2/images/0011.tif", np.uint8, 1 / 256),
     "0011.tif: slice of type uint8, the other slices of its folder are uint16"),
    (lambda s: _retype(s / "train/kidney_2/images/0012.tif", np.float32, 1 / 65535),
     "0012.tif: slice of type float32"),
])
def test_bad_input_one_line_no_dataset(tmp_path, kaggle_small, mutate, expect, capsys):
    rc, err, raw = _bad(tmp_path, kaggle_small, mutate, capsys)
    assert rc != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err       # one line (progress bars aside)
    assert expect in errors[0] and "kidney_2" in errors[0]
    assert not any(raw.iterdir())      # nothing that looks like a dataset, no temporary leftovers


@pytest.mark.parametrize("value", ["-5", "nan", "0", "inf"])
def test_spacing_must_be_a_positive_number(tmp_path, kaggle_small, capsys, value):
    """--spacing kidney_6=-5 (or nan) was written into the dataset's spacing json."""
    rc, err, raw = _bad(tmp_path, kaggle_small, lambda s: None, capsys, "--spacing", f"kidney_6={value}")
    assert rc == 2 and err == f"error: --spacing kidney_6={value}: the voxel size must be a positive number of " \
                              "micrometres"
    assert not any(raw.iterdir())


def test_unknown_kidney_and_existing_dataset(tmp_path, kaggle_small, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["convert", "sennet", str(kaggle_small), "-d", "504", "-o", str(raw), "--kidneys", "kidney_9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown kidney 'kidney_9'" in err and len(err.splitlines()) == 1
    ok = ["convert", str(kaggle_small), "-d", "504", "-o", str(raw), "--kidneys", "kidney_5"]  # sennet by default
    assert main(ok) == 0
    capsys.readouterr()
    assert main(ok) == 2 and "already exists" in capsys.readouterr().err
    assert main(ok + ["--overwrite"]) == 0


def test_spacing_override(tmp_path, kaggle_small):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["convert", "sennet", str(kaggle_small), "-d", "505", "-o", str(raw), "--kidneys", "kidney_6",
                 "--spacing", "kidney_6=60"]) == 0
    j = json.loads(next((raw / "Dataset505_SenNet" / "imagesTs").glob("*.json")).read_text())
    assert j["spacing"] == [60.0, 60.0, 60.0]


def test_unset_nnunet_folders_are_one_line_errors(tmp_path, kaggle_small, monkeypatch, capsys):
    """Without nnUNet_raw and -o the converter once wrote into the current folder; now it names the
    variable. `splits` without nnUNet_preprocessed fails instead of printing a hint and exiting 0."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "sennet", str(kaggle_small), "-d", "503", "--kidneys", "kidney_5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nnUNet_raw is not set" in err[0] and "-o" in err[0]
    assert not list(tmp_path.glob("Dataset503*")) and not list(tmp_path.glob(".Dataset503*"))
    # with -o it works, and `splits` then names the missing nnUNet_preprocessed
    assert main(["convert", "sennet", str(kaggle_small), "-d", "503", "--kidneys", "kidney_1_dense", "kidney_2",
                 "-o", str(tmp_path / "raw")]) == 0
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    capsys.readouterr()
    assert main(["splits", "-d", "503"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nnUNet_preprocessed is not set" in err[0]
