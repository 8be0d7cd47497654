"""convert hubmap-vasculature on a hand-written Kaggle layout (DOMAIN §8), read back with nnU-Net's own tools."""
import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from nnunet_vasculature.cli import main
from nnunet_vasculature.dataset_conversion.hubmap_vasculature import convert_vasculature
from nnunet_vasculature.errors import UserError

SQUARE = [[10, 10], [30, 10], [30, 30], [10, 30]]     # [x, y]: columns 10..30, rows 10..30 with the outline


def _write_kaggle(root, polygons, meta, tiles, size=64):
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for t in tiles:
        tifffile.imwrite(root / "train" / f"{t}.tif", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    with open(root / "polygons.jsonl", "w") as f:
        for tid, anns in polygons.items():
            f.write(json.dumps({"id": tid, "annotations": anns}) + "\n")
    with open(root / "tile_meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "source_wsi", "dataset", "i", "j"])
        w.writerows(meta)
    return root


def _good(root):
    vessel = {"type": "blood_vessel", "coordinates": [SQUARE]}
    polygons = {
        "aaaa": [vessel, {"type": "glomerulus", "coordinates": [[[40, 40], [60, 40], [60, 60], [40, 60]]]}],
        "bbbb": [vessel, {"type": "unsure", "coordinates": [[[40, 5], [50, 5], [50, 15]]]}],
        "cccc": [vessel, dict(vessel)],                                     # dataset 2: exact duplicate
    }
    meta = [("aaaa", 1, 1, 0, 0), ("bbbb", 2, 1, 512, 0), ("cccc", 3, 2, 0, 512), ("dddd", 6, 3, 0, 0)]
    return _write_kaggle(root, polygons, meta, ["aaaa", "bbbb", "cccc", "dddd"])


def test_convert_labels_splits_and_nnunet_integrity(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    kaggle = _good(tmp_path / "kaggle")
    out = convert_vasculature(kaggle, 777, raw_root=tmp_path / "raw")
    lab = np.asarray(Image.open(out / "labelsTr" / "aaaa.png"))
    expected = np.zeros((64, 64), np.uint8)
    expected[10:31, 10:31] = 1
    expected[40:61, 40:61] = 2
    assert np.array_equal(lab, expected)
    lab_b = np.asarray(Image.open(out / "labelsTr" / "bbbb.png"))
    assert lab_b[6, 46] == 3 and lab_b[20, 20] == 1 and set(np.unique(lab_b)) == {0, 1, 3}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "blood_vessel": 1, "glomerulus": 2, "ignore": 3}
    assert ds["numTraining"] == 3 and ds["hubmap_vasculature"]["duplicates_dropped"] == 1
    assert not (out / "labelsTr" / "dddd.png").exists()                     # dataset 3: unlabelled
    splits = json.loads((out / "splits_final.json").read_text())
    assert [s["val"] for s in splits] == [["aaaa"], ["bbbb"], ["cccc"]]     # one fold per source WSI
    img, _ = NaturalImage2DIO().read_images([str(out / "imagesTr" / "aaaa_0000.png")])
    assert img.shape == (3, 1, 64, 64)
    assert np.array_equal(np.moveaxis(img[:, 0], 0, -1), tifffile.imread(kaggle / "train" / "aaaa.tif"))
    verify_dataset_integrity(str(out), num_processes=1)


def test_convert_options_unsure_background_and_dataset_folds(tmp_path):
    kaggle = _good(tmp_path / "kaggle")
    out = convert_vasculature(kaggle, 778, raw_root=tmp_path / "raw", unsure="background", folds="dataset")
    assert "ignore" not in json.loads((out / "dataset.json").read_text())["labels"]
    assert set(np.unique(np.asarray(Image.open(out / "labelsTr" / "bbbb.png")))) == {0, 1}
    splits = json.loads((out / "splits_final.json").read_text())
    assert [s["val"] for s in splits] == [["aaaa", "bbbb"], ["cccc"]]
    only1 = convert_vasculature(kaggle, 779, raw_root=tmp_path / "raw", datasets=(1,))
    assert sorted(p.name for p in (only1 / "labelsTr").iterdir()) == ["aaaa.png", "bbbb.png"]


@pytest.mark.parametrize("break_it, message", [
    (lambda p, m, t: p["bbbb"].append({"type": "blood_vessel", "coordinates": [[[60, 60], [70, 60], [60, 66]]]}),
     "tile bbbb annotation 2: polygon reaches outside"),
    (lambda p, m, t: p["aaaa"].append({"type": "blood_vessel", "coordinates": [[[1, 1], [5, 5]]]}),
     "tile aaaa annotation 2: polygon with 2 point"),
    (lambda p, m, t: p["cccc"].append({"type": "artery", "coordinates": [SQUARE]}),
     "tile cccc annotation 2: unknown type 'artery'"),
    (lambda p, m, t: t.remove("bbbb"), "bbbb.tif: tile missing"),
    (lambda p, m, t: m.pop(0), "tile aaaa has no row in tile_meta.csv"),
])
def test_convert_bad_input_one_line_nothing_written(tmp_path, capsys, break_it, message):
    vessel = {"type": "blood_vessel", "coordinates": [SQUARE]}
    polygons = {"aaaa": [vessel, dict(vessel)], "bbbb": [vessel, dict(vessel)], "cccc": [vessel, dict(vessel)]}
    polygons["aaaa"][1] = {"type": "glomerulus", "coordinates": [[[40, 40], [60, 40], [60, 60]]]}
    meta = [("aaaa", 1, 1, 0, 0), ("bbbb", 2, 1, 0, 0), ("cccc", 3, 2, 0, 0)]
    tiles = ["aaaa", "bbbb", "cccc"]
    break_it(polygons, meta, tiles)
    kaggle = _write_kaggle(tmp_path / "kaggle", polygons, meta, tiles)
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["convert", "hubmap-vasculature", str(kaggle), "-d", "780", "-o", str(raw)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert list(raw.iterdir()) == []                                          # no dataset, no temporary folder
    with pytest.raises(UserError):
        convert_vasculature(kaggle, 780, raw_root=raw)


@pytest.mark.parametrize("duplicate, message", [
    ("polygons", "polygons.jsonl:4: a second record for tile aaaa (first on line 1)"),
    ("meta", "tile_meta.csv:6: tile bbbb listed twice"),
])
def test_a_second_record_for_a_tile_is_refused(tmp_path, capsys, duplicate, message):
    """A second polygons.jsonl record (or tile_meta.csv row) for a tile once replaced the first silently."""
    kaggle = _good(tmp_path / "kaggle")
    if duplicate == "polygons":
        with open(kaggle / "polygons.jsonl", "a") as f:
            f.write(json.dumps({"id": "aaaa", "annotations": []}) + "\n")
    else:
        with open(kaggle / "tile_meta.csv", "a", newline="") as f:
            csv.writer(f).writerow(["bbbb", 2, 1, 0, 0])
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main(["convert", "hubmap-vasculature", str(kaggle), "-d", "781", "-o", str(raw)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert list(raw.iterdir()) == []


def test_splits_gathers_a_folds_held_out_and_the_test_images_for_stock_predict(tmp_path, capsys, monkeypatch):
    """`splits -d ID -f F --predict_input DIR`: what the docs' CPU trial once built with a python one-liner."""
    kaggle = _good(tmp_path / "kaggle")
    raw = tmp_path / "raw"
    raw.mkdir()
    out = convert_vasculature(kaggle, 782, raw_root=raw)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    splits = json.loads((out / "splits_final.json").read_text())
    for fold in range(len(splits)):
        target = tmp_path / f"in{fold}"
        assert main(["splits", "-d", "782", "-f", str(fold), "--predict_input", str(target)]) == 0
        expected = {f"{c}_0000.png" for c in splits[fold]["val"]} | {p.name for p in (out / "imagesTs").iterdir()}
        assert {p.name for p in target.iterdir()} == expected
        for name in expected:
            src = out / ("imagesTr" if (out / "imagesTr" / name).exists() else "imagesTs") / name
            assert (target / name).read_bytes() == src.read_bytes()
    capsys.readouterr()
    assert main(["splits", "-d", "782", "-f", "9", "--predict_input", str(tmp_path / "bad")]) == 2
    assert "no fold 9" in capsys.readouterr().err and not (tmp_path / "bad").exists()
