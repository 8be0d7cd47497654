"""export-model: a zip stock nnU-Net installs, from which `predict` gives bitwise the original folder's
prediction; the record's checks (folds, post-processing of another competition, newer plugin, unsafe
members) are one line each."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.model import make_model_folder

from nnunet_vasculature.errors import UserError, run_cli
from nnunet_vasculature.export import model_zip
from nnunet_vasculature.io import model_record as record
from nnunet_vasculature.io.intensity import KEY, PercentileMapping

SENNET_PP = {"threshold": 0.4, "threshold_u8": 102, "min_component_voxels": 8, "closing_radius": 0,
             "threshold_mode": "probability"}
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def export_cli(argv):
    """The export-model command as the CLI registers it (cli.py adds the module to SHARED_MODULES)."""
    parser = argparse.ArgumentParser(prog="nnunet-vasculature")
    model_zip.add_parser(parser.add_subparsers(dest="command", required=True))
    return run_cli(parser, ["export-model", *argv])


def trained_model(results: Path, folds=(0, 1), mapping=True) -> Path:
    """A model folder as nnU-Net's trainer leaves it with the final validation skipped (no validation/)."""
    folder = make_model_folder(results / "Dataset999_Tiny" / MODEL, folds=folds)
    if mapping:          # a --percentile_norm dataset: nnU-Net copies dataset.json with the mapping
        dj = json.loads((folder / "dataset.json").read_text())
        dj[KEY] = PercentileMapping(10.0, 99.8).to_json()
        (folder / "dataset.json").write_text(json.dumps(dj))
    return folder


def predict_store(inputs: Path, out: Path, folder: Path, folds) -> dict:
    from nnunet_vasculature.cli import main
    assert main(["predict", "-i", str(inputs), "-o", str(out), "-m", str(folder), "-f", *folds,
                 "-device", "cpu", "--disable_tta"]) == 0
    group = zarr.open_group(str(out), mode="r")
    return {name: np.asarray(group[name]) for name in group.array_keys()}


def test_stock_install_predicts_bitwise_like_the_original(tmp_path, kaggle_small, capsys):
    folder = trained_model(tmp_path / "results")
    assert not list(folder.glob("fold_*/validation/summary.json"))        # stock export would fail here
    pp = tmp_path / "postprocessing.json"
    pp.write_text(json.dumps(SENNET_PP))
    out_zip = tmp_path / "model.zip"
    assert export_cli(["-m", str(folder), "-f", "0", "1", "-pp", str(pp), "-o", str(out_zip)]) == 0

    installed_root = tmp_path / "installed"
    installed_root.mkdir()
    env = {**os.environ, "nnUNet_results": str(installed_root), "nnUNet_raw": str(tmp_path / "raw"),
           "nnUNet_preprocessed": str(tmp_path / "pre")}
    stock = Path(sys.executable).with_name("nnUNetv2_install_pretrained_model_from_zip")
    subprocess.run([str(stock), str(out_zip)], env=env, check=True, capture_output=True)
    installed = installed_root / "Dataset999_Tiny" / MODEL
    assert (installed / "fold_1" / "checkpoint_final.pth").is_file()

    rec = record.read_record(installed)
    assert rec["model"]["folds"] == ["0", "1"] and rec["plugin"]["version"] == record.installed_version()
    assert rec["intensity_mapping"] == PercentileMapping(10.0, 99.8).to_json()
    assert json.loads(record.model_postprocessing(installed).read_text()) == SENNET_PP
    assert json.loads((installed / "dataset.json").read_text())[KEY] == rec["intensity_mapping"]

    test_dir = kaggle_small / "test"
    original = predict_store(test_dir, tmp_path / "original.zarr", folder, ["0", "1"])
    shutil.rmtree(folder.parent)          # the installed copy must not lean on the original folder
    again = predict_store(test_dir, tmp_path / "installed.zarr", installed, ["0", "1"])
    assert sorted(original) == sorted(again) == ["kidney_5", "kidney_6"]
    for name in original:
        assert original[name].any() and np.array_equal(original[name], again[name])


def test_exports_what_the_model_was_trained_with(tmp_path):
    """Our trainer's module travels as an nnUNet_extTrainer entry; the source record comes from the plans."""
    folder = trained_model(tmp_path / "results", folds=(0,), mapping=False)
    ckpt_path = folder / "fold_0" / "checkpoint_final.pth"
    import torch
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["trainer_name"] = "VesselTransferTrainer_demo"
    torch.save(ckpt, ckpt_path)
    plans = json.loads((folder / "plans.json").read_text())
    plans["transfer_source"] = {"file": "/data/Task008_HepaticVessel.zip", "task": "Task008_HepaticVessel"}
    (folder / "plans.json").write_text(json.dumps(plans))
    out_zip = tmp_path / "m.zip"
    rec = model_zip.export_model(folder, ["0"], out_zip)
    assert rec["trainer_module"]["module"] == "nnunet_vasculature.trainers.vessel_transfer"
    assert rec["source_model"]["known_download"]["record"] == "https://zenodo.org/record/3734294"
    assert rec["postprocessing"] is None and rec["intensity_mapping"] is None
    root = "Dataset999_Tiny/VesselTransferTrainer_demo__nnUNetPlans__3d_fullres"
    with zipfile.ZipFile(out_zip) as zf:
        names = set(zf.namelist())
        entry = zf.read(f"{root}/nnunet_vasculature/ext/nnunet_vasculature_exported_trainer.py").decode()
    assert f"{root}/fold_0/checkpoint_final.pth" in names and f"{root}/plans.json" in names
    # the entry module imports the class in a fresh interpreter (as nnU-Net's ext-trainer search would)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "entry.py").write_text(entry)
    r = subprocess.run([sys.executable, "-c", "import entry; print(entry.VesselTransferTrainer_demo.__name__)"],
                       cwd=probe, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "VesselTransferTrainer_demo", r.stderr


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_input_is_one_line(tmp_path, capsys):
    folder = trained_model(tmp_path / "results", folds=(0,), mapping=False)
    out_zip = tmp_path / "m.zip"
    err = _one_line_error(capsys, export_cli(["-m", str(folder), "-f", "0", "3", "-o", str(out_zip)]))
    assert "fold_3" in err and "fold_0" in err
    other = tmp_path / "kidney_pp.json"
    other.write_text(json.dumps({**SENNET_PP, "competition": "hubmap-kidney"}))      # SenNet keys, other competition
    err = _one_line_error(capsys, export_cli(["-m", str(folder), "-f", "0", "-pp", str(other), "-o", str(out_zip)]))
    assert str(other) in err and "hubmap-kidney" in err
    unkeyed = tmp_path / "unkeyed.json"
    unkeyed.write_text(json.dumps({"threshold": 0.5, "min_area": 10}))               # no key, not SenNet's schema
    err = _one_line_error(capsys, export_cli(["-m", str(folder), "-f", "0", "-pp", str(unkeyed), "-o", str(out_zip)]))
    assert str(unkeyed) in err
    keyed = tmp_path / "sennet_pp.json"
    keyed.write_text(json.dumps({**SENNET_PP, "competition": "sennet"}))
    assert export_cli(["-m", str(folder), "-f", "0", "-pp", str(keyed), "-o", str(out_zip)]) == 0
    assert not list(tmp_path.glob(".m.zip.tmp-*"))


def _rewrite(src: Path, dst: Path, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            name, data = change(info.filename, data)
            zout.writestr(name, data)


def test_install_refuses_newer_plugin_and_unsafe_members(tmp_path):
    folder = trained_model(tmp_path / "results", folds=(0,), mapping=False)
    good = tmp_path / "m.zip"
    model_zip.export_model(folder, ["0"], good)
    results = tmp_path / "installed"
    assert (model_zip.install_model_zip(good, results) / "fold_0" / "checkpoint_final.pth").is_file()

    def newer(name, data):
        if name.endswith("export.json"):
            rec = json.loads(data)
            rec["plugin"]["version"] = "999.0"
            data = json.dumps(rec).encode()
        return name, data
    bad = tmp_path / "newer.zip"
    _rewrite(good, bad, newer)
    with pytest.raises(UserError, match=r"newer\.zip.*999\.0, newer than the installed"):
        model_zip.install_model_zip(bad, tmp_path / "other", overwrite=True)
    assert not (tmp_path / "other" / "Dataset999_Tiny" / MODEL).exists()

    evil = tmp_path / "evil.zip"
    _rewrite(good, evil, lambda n, d: (n.replace("fold_0/checkpoint_final.pth", "../../../evil.pth"), d))
    with pytest.raises(UserError, match="outside the results folder"):
        model_zip.install_model_zip(evil, tmp_path / "other")
    assert not (tmp_path / "evil.pth").exists()


def test_known_download_checksum(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    from nnunet_vasculature.pretrained import known_sources
    other = tmp_path / "Task009_Spleen.zip"
    other.write_bytes(b"x")
    assert known_sources.known_download_checksum(other) is None
    task8 = tmp_path / "Task008_HepaticVessel.zip"
    task8.write_bytes(b"not the real zip" * 1000)
    md5 = hashlib.md5(task8.read_bytes()).hexdigest()
    result = known_sources.known_download_checksum(task8)
    assert result["record"] == "https://zenodo.org/record/3734294" and result["md5"] == md5
    if known_sources.KNOWN_DOWNLOADS[task8.name].md5 is None:      # not recorded: reported, not verified
        assert result["verified"] is None and "NOT verified" in known_sources.describe_check(result)
    listed = dataclasses.replace(known_sources.KNOWN_DOWNLOADS[task8.name], md5="0" * 32, size_bytes=None)
    monkeypatch.setitem(known_sources.KNOWN_DOWNLOADS, task8.name, listed)
    with pytest.raises(UserError, match=f"{task8.name}: MD5 {md5}, but https://zenodo.org/record/3734294 lists 0+"):
        known_sources.known_download_checksum(task8)
    monkeypatch.setitem(known_sources.KNOWN_DOWNLOADS, task8.name, dataclasses.replace(listed, md5=md5))
    assert known_sources.known_download_checksum(task8)["verified"] is True
    monkeypatch.setitem(known_sources.KNOWN_DOWNLOADS, task8.name, dataclasses.replace(listed, size_bytes=5))
    with pytest.raises(UserError, match="bytes, but"):
        known_sources.known_download_checksum(task8)


def test_predict_refuses_a_model_installed_by_the_stock_command_from_a_newer_plugin(tmp_path, capsys):
    """Unpacked by stock nnUNetv2_install_pretrained_model_from_zip, a model's record is only read by predict:
    a record asking for a newer plugin is one line there, before the model or the input is touched."""
    import json

    from helpers.model import make_model_folder

    from nnunet_vasculature import __version__
    from nnunet_vasculature.cli import main
    from nnunet_vasculature.io.model_record import EXTRA_DIR, FORMAT, RECORD_FILE
    folder = make_model_folder(tmp_path / "model")
    (folder / EXTRA_DIR).mkdir()
    major = int(__version__.split(".")[0])
    newer = {"format": FORMAT, "plugin": {"version": f"{major + 1}.0"}}
    (folder / EXTRA_DIR / RECORD_FILE).write_text(json.dumps(newer))
    capsys.readouterr()
    assert main(["predict", "-i", str(tmp_path / "missing_input"), "-o", str(tmp_path / "o.zarr"), "-m", str(folder),
                 "-f", "0", "-device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"newer than the installed {__version__}" in err[0] and RECORD_FILE in err[0], err
    assert not (tmp_path / "o.zarr").exists()
