"""Shifted synthetic test kidneys (synthesize sennet --test_voxel_um / --acquisition): the default output is the one
the demo and the other tests were built on, the anatomy stays in µm across voxel sizes, each acquisition preset
changes what it says and nothing else, and the written kidneys go through convert, predict, submit and score."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.rle import rle_decode
from nnunet_vasculature.synthetic.sennet import ACQUISITIONS, read_test_kidneys, synthesize

# the last commit before shifted kidneys existed: its generator wrote the demo's and the tests' kidneys
BEFORE_SHIFT = "8d2a65a5a4c4fa0db4a4a585adb6e05ff3bd6c6e"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    tests = [(50.0, name) for name in ACQUISITIONS] + [(80.0, "same")]
    return synthesize(tmp_path_factory.mktemp("shift") / "kaggle", seed=0, tests=tests)


def _images(root: Path, name: str) -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in sorted((root / "test" / name / "images").glob("*.tif"))])


def _truth(root: Path) -> dict[str, np.ndarray]:
    """solution.csv decoded with its own width and height, one volume per kidney."""
    planes: dict[str, list] = {}
    with open(root / "solution.csv", newline="") as f:
        for row in csv.DictReader(f):
            kidney = row["id"].rpartition("_")[0]
            planes.setdefault(kidney, []).append(rle_decode(row["rle"], (int(row["height"]), int(row["width"]))))
    return {k: np.stack(v).astype(np.int64) for k, v in planes.items()}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_output_is_the_generator_before_shifts(tmp_path, monkeypatch):
    """Without the new flags every file (images, labels, CSVs) is byte for byte what the generator of the commit
    before this feature writes for the same seed."""
    try:
        old_source = subprocess.run(["git", "show", f"{BEFORE_SHIFT}:nnunet_vasculature/synthetic/sennet.py"],
                                    cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {BEFORE_SHIFT[:7]} not in this checkout (shallow clone or no git)")
    (tmp_path / "old_sennet.py").write_text(old_source)
    spec = importlib.util.spec_from_file_location("old_sennet", tmp_path / "old_sennet.py")
    old = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, old)      # its dataclasses look their module up
    spec.loader.exec_module(old)
    before = _files(old.synthesize(tmp_path / "before", seed=3))
    after = _files(synthesize(tmp_path / "after", seed=3))
    assert sorted(after) == sorted(before)
    assert [k for k in before if before[k] != after[k]] == []


def test_a_coarser_kidney_has_the_same_anatomy_in_um(shifted):
    """kidney_5's anatomy at 80 µm: shape extent / 80; the same vessels where they are in µm (the 50 µm truth read
    at the 80 µm voxel centres matches), the same share of the volume (so ~(50/80)^3 their voxels); the truth drawn
    on the image's own grid (bright where labelled); the record says so."""
    truth = _truth(shifted)
    record = read_test_kidneys(shifted)
    extent = np.array([2000, 4400, 4000])
    for name, voxel in (("kidney_5_50um", 50.0), ("kidney_5_80um", 80.0)):
        assert truth[name].shape == tuple(np.round(extent / voxel).astype(int)) == _images(shifted, name).shape
        assert record[name]["voxel_um"] == voxel and record[name]["acquisition"] == "same"
        assert record[name]["shape_zyx"] == list(truth[name].shape)
    fine, coarse = truth["kidney_5_50um"], truth["kidney_5_80um"]
    centres = [np.minimum(((np.arange(n) + 0.5) * 80 / 50).astype(int), m - 1)     # 50 µm voxels holding them
               for n, m in zip(coarse.shape, fine.shape)]
    at_centres = fine[np.ix_(*centres)].astype(bool)
    assert 2 * (at_centres & (coarse > 0)).sum() / (at_centres.sum() + coarse.sum()) > 0.85
    assert coarse.mean() == pytest.approx(fine.mean(), rel=0.1)
    assert coarse.sum() / fine.sum() == pytest.approx((50 / 80) ** 3, rel=0.1)
    img = _images(shifted, "kidney_5_80um").astype(float)
    lab = coarse.astype(bool)
    assert img[lab].mean() - img[~lab & (img > np.median(img))].mean() > 3000


def test_contrast_moves_the_grey_values_not_the_labels(shifted):
    same, drift = _images(shifted, "kidney_5_50um"), _images(shifted, "kidney_5_50um_contrast")
    assert abs(float(np.median(drift)) - float(np.median(same))) > 1000
    truth = _truth(shifted)
    assert np.array_equal(truth["kidney_5_50um_contrast"], truth["kidney_5_50um"])


def test_noisy_raises_the_noise_of_the_medium(shifted):
    """The corners of every slice are mounting medium (outside the sample's ellipsoid): their sd is the noise."""
    same, noisy = _images(shifted, "kidney_5_50um"), _images(shifted, "kidney_5_50um_noisy")
    corner = (slice(None), slice(0, 4), slice(0, 4))
    assert noisy[corner].astype(float).std() > 2 * same[corner].astype(float).std()
    truth = _truth(shifted)
    assert np.array_equal(truth["kidney_5_50um_noisy"], truth["kidney_5_50um"])


def test_partial_puts_more_of_the_field_in_the_medium(shifted):
    """A larger field around the same sample: more voxels at the medium's grey value, the same vessels."""
    def medium_share(img: np.ndarray) -> float:
        medium = np.median(img[:, :4, :4])
        cy, cx = img.shape[1] // 2, img.shape[2] // 2
        tissue = np.median(img[:, cy - 2:cy + 2, cx - 2:cx + 2])
        return float((img < (medium + tissue) / 2).mean())
    same, partial = _images(shifted, "kidney_5_50um"), _images(shifted, "kidney_5_50um_partial")
    assert partial.shape[1:] == tuple(np.round(np.array(same.shape[1:]) * 1.6).astype(int))
    assert medium_share(partial) > medium_share(same) + 0.2
    truth = _truth(shifted)
    assert truth["kidney_5_50um_partial"].sum() == pytest.approx(truth["kidney_5_50um"].sum(), rel=0.05)


def test_rings_are_concentric_about_the_rotation_axis(shifted):
    """What the rings add (rings minus the same kidney without them) varies with the distance to the axis and is
    constant along each circle."""
    same, rings = _images(shifted, "kidney_5_50um"), _images(shifted, "kidney_5_50um_rings")
    added = rings.astype(float) - same.astype(float)
    h, w = added.shape[1:]
    yy, xx = np.meshgrid(np.arange(h) + 0.5 - h / 2, np.arange(w) + 0.5 - w / 2, indexing="ij")
    radius = np.hypot(yy, xx).astype(int)
    unclipped = (rings > 0) & (rings < 65535) & (same > 0) & (same < 65535)
    by_radius = [added[(radius == r) & unclipped] for r in range(radius.max() + 1)]
    means = np.array([v.mean() for v in by_radius if v.size])
    assert means.std() > 300                                     # rings at some radii, none at others
    assert max(v.std() for v in by_radius if v.size) < 5        # the same along each circle and in every slice
    truth = _truth(shifted)
    assert np.array_equal(truth["kidney_5_50um_rings"], truth["kidney_5_50um"])


def test_cli_names_and_bad_values(tmp_path, capsys):
    assert main(["synthesize", "sennet", "-o", str(tmp_path / "k"), "--test_voxel_um", "63.08",
                 "--acquisition", "same", "noisy"]) == 0
    assert sorted(read_test_kidneys(tmp_path / "k")) == ["kidney_5_63p08um", "kidney_5_63p08um_noisy"]
    assert sorted(p.name for p in (tmp_path / "k" / "test").iterdir()) == sorted(read_test_kidneys(tmp_path / "k"))
    assert main(["synthesize", "sennet", "-o", str(tmp_path / "bad"), "--test_voxel_um", "0"]) != 0
    assert "--test_voxel_um 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["synthesize", "sennet", "--list_acquisitions"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ACQUISITIONS)


@pytest.mark.slow
def test_shifted_kidneys_convert_predict_submit_and_score(tmp_path, nnunet_dirs, capsys):
    """An unknown name needs its voxel size (convert and predict say so); with it every command runs, and a
    submission equal to the truth scores 1 against solution.csv, an empty one 0."""
    from helpers.model import make_model_folder

    from nnunet_vasculature.postprocess.sennet_score import score_csv
    from nnunet_vasculature.postprocess.tune import write_postprocessing
    kaggle = synthesize(tmp_path / "kaggle", seed=1, tests=[(80.0, "same"), (63.08, "contrast")])
    names = read_test_kidneys(kaggle)
    assert main(["convert", "sennet", str(kaggle), "-d", "502"]) != 0
    assert "kidney_5_80um" in capsys.readouterr().err
    pairs = [f"{k}={r['voxel_um']:g}" for k, r in names.items()]
    assert main(["convert", "sennet", str(kaggle), "-d", "502", "--kidneys", *names, "--spacing", *pairs]) == 0
    cases = json.loads((nnunet_dirs["raw"] / "Dataset502_SenNet" / "sennet_cases.json").read_text())["kidneys"]
    assert {k: cases[k]["spacing_um"] for k in names} == {k: r["voxel_um"] for k, r in names.items()}

    model = make_model_folder(tmp_path / "model")
    probs, kidney = tmp_path / "probs.zarr", kaggle / "test" / "kidney_5_80um"
    assert main(["predict", "-i", str(kidney), "-o", str(probs), "-m", str(model), "-device", "cpu"]) != 0
    assert "--spacing" in capsys.readouterr().err
    for name, rec in names.items():
        assert main(["predict", "-i", str(kaggle / "test" / name), "-o", str(probs), "-m", str(model),
                     "-device", "cpu", "--disable_tta", "--spacing", str(rec["voxel_um"])]) == 0
    write_postprocessing({"threshold_u8": 128}, tmp_path / "pp.json", "sennet")
    sub = tmp_path / "submission.csv"
    assert main(["submit", "-i", str(probs), "-pp", str(tmp_path / "pp.json"), "-o", str(sub),
                 "--sample", str(kaggle / "sample_submission.csv")]) == 0
    assert set(score_csv(kaggle / "solution.csv", sub)) == set(names)

    with open(kaggle / "solution.csv", newline="") as f:
        rows = [(r["id"], r["rle"]) for r in csv.DictReader(f)]
    for path, rle in ((tmp_path / "perfect.csv", None), (tmp_path / "empty.csv", "")):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("id", "rle"), *((i, r if rle is None else rle) for i, r in rows)])
    assert score_csv(kaggle / "solution.csv", tmp_path / "perfect.csv") == {k: 1.0 for k in names}
    assert score_csv(kaggle / "solution.csv", tmp_path / "empty.csv") == {k: 0.0 for k in names}
