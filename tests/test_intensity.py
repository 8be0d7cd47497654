"""Per-kidney percentile intensity mapping (convert sennet --percentile_norm, applied again by predict).

Expected values come from numpy's percentile on the whole volume and the documented map (low -> 1,
high -> 65535, linear between, rounded, clipped there, zeros kept), not from the code under test."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers.model import make_model_folder
from scipy import ndimage as ndi

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.input_spec import open_inputs
from nnunet_vasculature.io.intensity import PercentileMapping, map_sources, volume_percentiles

PCT = (10.0, 99.8)


def _expected(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x[x != 0], PCT, method="inverted_cdf")
    y = np.clip(np.rint((x.astype(np.float64) - lo) * 65534.0 / (hi - lo) + 1.0), 1, 65535)
    return np.where(x == 0, 0, y).astype(np.uint16)


def test_percentiles_are_numpys_on_small_volumes_and_close_on_large_ones():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    lo, hi = volume_percentiles(lambda z: vol[z], 10, (10, 10), PercentileMapping(10, 99.8))
    # of the 999 non-zero values, the smallest with >= 99.9 resp. >= 997.002 of them at or below
    assert (lo, hi) == (100.0, 998.0)
    rng = np.random.default_rng(0)
    big = rng.gamma(2.0, 3000.0, (300, 300, 300)).astype(np.float32)       # 300 planes, stride 2 in-plane
    lo, hi = volume_percentiles(lambda z: big[z], 300, (300, 300), PercentileMapping(*PCT))
    ref = np.percentile(big, PCT)
    assert abs(lo - ref[0]) < 0.01 * ref[0] and abs(hi - ref[1]) < 0.02 * ref[1], (lo, hi, ref)


def _kidney(root: Path, split: str, name: str, img: np.ndarray, labels: np.ndarray | None) -> None:
    for sub, arr in (("images", img), ("labels", labels)):
        if arr is None:
            continue
        (root / split / name / sub).mkdir(parents=True)
        for z in range(arr.shape[0]):
            tifffile.imwrite(root / split / name / sub / f"{z:04d}.tif", arr[z])


@pytest.fixture
def drifted(tmp_path):
    """Three kidneys of one anatomy; kidney_2 and kidney_5 with a linear intensity drift of kidney_1's."""
    rng = np.random.default_rng(1)
    g = ndi.gaussian_filter(rng.random((12, 40, 48)), 2)
    base = (g - g.min()) / (g.max() - g.min()) * 20000 + 9000
    base[:, :, :3] = 0                                          # no data outside the field: stays 0
    lab = (base > np.percentile(base, 85)).astype(np.uint8) * 255
    root = tmp_path / "kaggle"
    imgs = {"kidney_1_dense": base, "kidney_2": base * 1.6 + 2500, "kidney_5": base * 0.7 + 300}
    imgs = {k: np.where(base == 0, 0, np.rint(v)).astype(np.uint16) for k, v in imgs.items()}
    _kidney(root, "train", "kidney_1_dense", imgs["kidney_1_dense"], lab)
    _kidney(root, "train", "kidney_2", imgs["kidney_2"], lab)
    _kidney(root, "test", "kidney_5", imgs["kidney_5"], None)
    return root, imgs


def test_convert_maps_each_kidney_by_its_own_percentiles(drifted, nnunet_dirs):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    root, imgs = drifted
    assert main(["convert", "sennet", str(root), "-d", "530", "--percentile_norm", "10", "99.8"]) == 0
    ds = nnunet_dirs["raw"] / "Dataset530_SenNet"
    verify_dataset_integrity(str(ds), num_processes=1)
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["intensity_mapping"] == {"method": "percentile", "percentiles": [10.0, 99.8], "to": [1.0, 65535.0]}
    meta = json.loads((ds / "sennet_cases.json").read_text())["kidneys"]
    out = {}
    for name, img in imgs.items():
        sub = "imagesTs" if name == "kidney_5" else "imagesTr"
        out[name] = np.concatenate([tifffile.imread(ds / sub / f"{c['case']}_0000.tif") for c in meta[name]["cases"]])
        np.testing.assert_array_equal(out[name], _expected(img))
        assert [meta[name]["intensity"][k] for k in ("low", "high")] == list(np.percentile(img[img != 0], PCT,
                                                                                          method="inverted_cdf"))
        assert (out[name] == 65535).mean() > 0.001 and (out[name] == 1).mean() > 0.05   # clipped at both ends
    # the drift is gone: the three kidneys' mapped images agree to rounding (each uint16 level of the
    # input is `gain` levels after mapping; the drifted inputs were rounded, so were their percentiles)
    k1 = imgs["kidney_1_dense"]
    lo, hi = np.percentile(k1[k1 != 0], PCT, method="inverted_cdf")
    gain = 65534 / (hi - lo)
    for name in ("kidney_2", "kidney_5"):
        d = np.abs(out[name].astype(int) - out["kidney_1_dense"].astype(int))
        assert d.max() <= 1 + 3 * gain, (name, d.max(), gain)
    assert np.abs(imgs["kidney_2"].astype(int) - k1.astype(int))[k1 != 0].min() > 2000


@pytest.mark.slow
def test_predict_maps_each_input_like_conversion(drifted, nnunet_dirs, tmp_path, capsys):
    root, imgs = drifted
    assert main(["convert", "sennet", str(root), "-d", "531", "--kidneys", "kidney_5", "--percentile_norm",
                 "10", "99.8"]) == 0
    ts = nnunet_dirs["raw"] / "Dataset531_SenNet" / "imagesTs"
    plain = make_model_folder(tmp_path / "plain", normalization="CTNormalization")
    mapped = make_model_folder(tmp_path / "mapped", normalization="CTNormalization")
    dj = json.loads((mapped / "dataset.json").read_text())
    dj["intensity_mapping"] = PercentileMapping(*PCT).to_json()      # as nnU-Net copies it from the dataset
    (mapped / "dataset.json").write_text(json.dumps(dj))
    # the values predict reads from the Kaggle folder are the converted image's, number for number
    (src,) = map_sources(open_inputs(root / "test" / "kidney_5"), PercentileMapping(*PCT), log=lambda m: None)
    np.testing.assert_array_equal(src.read(0, 12), _expected(imgs["kidney_5"]).astype(np.float32))
    (conv,) = open_inputs(ts)
    np.testing.assert_array_equal(conv.read(0, 12), src.read(0, 12))
    args = ["-device", "cpu", "--disable_tta"]
    kaggle = root / "test" / "kidney_5"
    for name, inp, model in (("k", kaggle, mapped), ("c", ts, mapped), ("p", kaggle, plain)):
        assert main(["predict", "-i", str(inp), "-o", str(tmp_path / f"{name}.zarr"), "-m", str(model), *args]) == 0
    probs = {n: zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r")["kidney_5"][:] for n in "kcp"}
    np.testing.assert_array_equal(probs["k"], probs["c"])       # mapped on the fly == mapped at conversion
    assert (probs["k"] != probs["p"]).mean() > 0.1              # and the mapping is really applied
    # images mapped at conversion, model trained without: refused in one line
    capsys.readouterr()
    assert main(["predict", "-i", str(ts), "-o", str(tmp_path / "x.zarr"), "-m", str(plain), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "intensity-mapped at conversion" in err[0] and not (tmp_path / "x.zarr").exists()


def test_bad_percentiles_are_one_line_errors(drifted, nnunet_dirs, capsys):
    root, _ = drifted
    capsys.readouterr()
    assert main(["convert", "sennet", str(root), "-d", "532", "--percentile_norm", "99", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need 0 <= LOW < HIGH <= 100" in err[0]
    assert not list(nnunet_dirs["raw"].glob("Dataset532_*"))
