"""stitch (stock .npz outputs of chunk cases -> one zarr per kidney), pseudo-labels -> new dataset version."""
import json
import os

import numpy as np
import tifffile
import zarr

from nnunet_vasculature.cli import main
from nnunet_vasculature.trainers import EXT_TRAINER_DIR, ext_trainer_value


def test_stitch_chunks_into_one_kidney(tmp_path, kaggle_small, nnunet_dirs, capsys):
    assert main(["convert", "sennet", str(kaggle_small), "-d", "510", "--kidneys", "kidney_5", "--chunk_slices",
                 "15"]) == 0
    ds = nnunet_dirs["raw"] / "Dataset510_SenNet"
    meta = json.loads((ds / "sennet_cases.json").read_text())["kidneys"]["kidney_5"]
    assert len(meta["cases"]) == 3
    rng = np.random.default_rng(0)
    preds = tmp_path / "npz"
    preds.mkdir()
    full = []
    for c in meta["cases"]:
        p1 = rng.random((c["z1"] - c["z0"], 88, 80)).astype(np.float32)
        np.savez(preds / f"{c['case']}.npz", probabilities=np.stack([1 - p1, p1]))
        full.append(p1)
    out = tmp_path / "k.zarr"
    assert main(["stitch", "-i", str(preds), "-d", "510", "-o", str(out)]) == 0
    arr = zarr.open_group(str(out), mode="r")["kidney_5"]
    np.testing.assert_array_equal(arr[:], np.rint(np.concatenate(full) * 255).astype(np.uint8))
    assert arr.attrs["slice_ids"][:2] == ["kidney_5_0000", "kidney_5_0001"] and arr.attrs["complete"]
    # a chunk with NaN at its plane 3, then a truncated chunk: one line naming the file (and the plane)
    bad = preds / f"{meta['cases'][1]['case']}.npz"
    p1 = full[1].copy()
    p1[3, 5, 5] = np.nan
    np.savez(bad, probabilities=np.stack([1 - p1, p1]))
    capsys.readouterr()
    assert main(["stitch", "-i", str(preds), "-d", "510", "-o", str(tmp_path / "nan.zarr")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]     # tqdm's lines aside
    assert len(err) == 1 and str(bad) in err[0] and "plane 3" in err[0], err
    bad.write_bytes(bad.read_bytes()[:200])
    assert main(["stitch", "-i", str(preds), "-d", "510", "-o", str(tmp_path / "cut.zarr")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: not a readable .npz"), err
    bad.unlink()
    assert main(["stitch", "-i", str(preds), "-d", "510", "-o", str(tmp_path / "x.zarr")]) == 2


def test_pseudo_labels_make_a_dataset_with_ignore(tmp_path, kaggle_small, nnunet_dirs):
    lab_dir = kaggle_small / "train" / "kidney_2" / "labels"
    sparse = np.stack([tifffile.imread(lab_dir / f"{z:04d}.tif") for z in range(44)]) > 0
    rng = np.random.default_rng(1)
    prob = (rng.random(sparse.shape) * 255).astype(np.uint8)
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    a = g.create_array("kidney_2", shape=prob.shape, dtype="uint8")
    a[:] = prob
    a.attrs.update({"kidney": "kidney_2", "complete": True, "source": {"tool": "stitch"}})
    out = tmp_path / "k2_pseudo"
    assert main(["pseudo-label", "-i", str(tmp_path / "p.zarr" / "kidney_2"), "--labels", str(lab_dir),
                 "--threshold", "0.8", "--uncertain", "0.4", "-o", str(out)]) == 0
    new = np.stack([tifffile.imread(out / f"{z:04d}.tif") for z in range(44)])
    hi, lo = int(np.ceil(0.8 * 255)), int(np.ceil(0.4 * 255))
    np.testing.assert_array_equal(new == 255, sparse | (prob >= hi))
    np.testing.assert_array_equal(new == 128, ~sparse & (prob >= lo) & (prob < hi))
    assert main(["convert", "sennet", str(kaggle_small), "-d", "511", "--kidneys", "kidney_1_dense", "kidney_2",
                 "--labels", f"kidney_2={out}"]) == 0
    ds = nnunet_dirs["raw"] / "Dataset511_SenNet"
    assert json.loads((ds / "dataset.json").read_text())["labels"] == {"background": 0, "vessel": 1, "ignore": 2}
    seg = tifffile.imread(ds / "labelsTr" / "kidney_2_z0000.tif")
    np.testing.assert_array_equal(seg, np.where(new == 128, 2, new > 0))


def test_env_line(monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_extTrainer", "/somewhere/else")
    assert main(["env"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("export nnUNet_extTrainer=") and str(EXT_TRAINER_DIR) in line and "/somewhere/else" in line
    assert (EXT_TRAINER_DIR / "nnunet_vasculature_ext_trainers.py").is_file()
    assert ext_trainer_value().split(os.pathsep)[-1] == str(EXT_TRAINER_DIR)
