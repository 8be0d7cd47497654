"""Streaming prediction vs stock nnUNetPredictor on whole volumes, zarr output, resume, bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from model_helpers import make_model_folder
from scipy import ndimage as ndi

from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunet_vasculature.io.sources import VolumeSource

CLI = [str(Path(sys.executable).parent / "nnunet-vasculature")]
MARGIN = 4      # stock aggregates tiles in float16: its volume border is the least exact part


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (ndi.gaussian_filter(rng.random(shape), 2) * 30000 + 1000).astype(np.float32)


def _stock(folder, img, spacing, folds, tta):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    p = nnUNetPredictor(use_mirroring=tta, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), list(folds))
    _, probs = p.predict_single_npy_array(img[None], {"spacing": list(spacing)}, None, None, True)
    return probs[1]


def _ours(folder, img, spacing, folds, tta, start=0, predictor=None, end=None, scan=None):
    """Planes [start, end) of the streaming prediction of ``img``, each emitted exactly once."""
    src = VolumeSource("v", img.shape, spacing, [str(i) for i in range(img.shape[0])],
                       [(0, img.shape[0], lambda a, b: img[a:b])])
    out = {}

    def sink(z, p):
        for i, plane in enumerate(p):
            assert z + i not in out
            out[z + i] = plane
    predictor = predictor or StreamingPredictor(folder, list(folds), device=torch.device("cpu"), use_mirroring=tta)
    predictor.predict(src, sink, start, end=end, scan=scan)
    stop = img.shape[0] if end is None else min(end, img.shape[0])
    assert sorted(out) == list(range(start, stop))
    return np.stack([out[z] for z in sorted(out)]) if out else np.zeros((0, *img.shape[1:]), np.float32)


def _compare(ours, stock):
    m = MARGIN
    d = np.abs(ours - stock)[m:-m, m:-m, m:-m]
    q = np.abs(np.rint(ours * 255).astype(int) - np.rint(stock * 255).astype(int))[m:-m, m:-m, m:-m]
    assert d.max() <= 5e-3 and d.mean() <= 5e-4, (d.max(), d.mean())
    assert q.max() <= 1 and (q > 0).mean() < 0.05


@pytest.mark.parametrize("spacing,model_spacing,folds,tta", [
    ((50.0, 50.0, 50.0), (50.0, 50.0, 50.0), (0,), True),        # same grid, mirroring TTA
    ((50.0, 50.0, 50.0), (50.0, 50.0, 50.0), (0, 1), False),     # two folds averaged
    ((63.08, 63.08, 63.08), (50.0, 50.0, 50.0), (0,), False),    # kidney_6-like: resampled both ways
])
def test_matches_stock_predictor(tmp_path, spacing, model_spacing, folds, tta):
    folder = make_model_folder(tmp_path / "model", folds=folds, spacing=model_spacing)
    img = _image((36, 44, 40))
    stock = _stock(folder, img, spacing, folds, tta)
    ours = _ours(folder, img, spacing, folds, tta)
    _compare(ours, stock)
    if len(folds) > 1:    # really an average: differs from each single fold
        single = _ours(folder, img, spacing, (0,), tta)
        assert np.abs(single - ours).max() > 0.01


def test_tta_changes_and_resume_is_exact(tmp_path):
    folder = make_model_folder(tmp_path / "model", spacing=(63.08, 63.08, 63.08))
    img = _image((40, 30, 34), seed=4)
    sp = (50.0, 50.0, 50.0)
    full = _ours(folder, img, sp, (0,), False)
    assert np.abs(full - _ours(folder, img, sp, (0,), True)).max() > 1e-3
    for start in (1, 17, 39):      # restarting at any plane reproduces the same planes
        np.testing.assert_allclose(_ours(folder, img, sp, (0,), False, start), full[start:], atol=1e-5)


def test_zero_border_is_cropped_like_stock(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    img = _image((36, 44, 40), seed=2)
    img[:6] = 0
    img[:, :, -7:] = 0
    stock = _stock(folder, img, (50.0,) * 3, (0,), False)
    ours = _ours(folder, img, (50.0,) * 3, (0,), False)
    assert ours[:6].max() == 0 and ours[:, :, -7:].max() == 0
    _compare(ours[6:, :, :-7], stock[6:, :, :-7])


def _kaggle_kidney(root: Path, img: np.ndarray, name="kidney_5"):
    d = root / "test" / name / "images"
    d.mkdir(parents=True)
    for z in range(img.shape[0]):
        tifffile.imwrite(d / f"{z:04d}.tif", img[z].astype(np.uint16))
    return d.parent


def test_cli_zarr_output_resume_and_refusal(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    img = _image((30, 36, 32), seed=5)
    kidney = _kaggle_kidney(tmp_path / "kaggle", img)
    out = tmp_path / "probs.zarr"
    base = CLI + ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    arr = zarr.open_group(str(out), mode="r")["kidney_5"]
    assert arr.dtype == np.uint8 and arr.shape == (30, 36, 32)
    assert arr.attrs["complete"] and arr.attrs["slice_ids"][3] == "kidney_5_0003"
    assert arr.attrs["spacing"] == [50.28] * 3
    ref = _ours(folder, img.astype(np.uint16).astype(np.float32), (50.28,) * 3, (0,), False)
    ref = np.rint(ref * 255).astype(np.uint8)
    np.testing.assert_array_equal(arr[:], ref)
    # an existing output is refused
    r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode != 0 and "is already written" in r.stderr and "Traceback" not in r.stderr
    # an interrupted run resumes from the planes already written
    g = zarr.open_group(str(out), mode="a")
    g["kidney_5"].attrs.update({"complete": False, "planes_done": 16})
    g["kidney_5"][16:] = 0
    r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode == 0 and "resuming kidney_5 at plane 16" in r.stdout
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)


def test_cli_bad_input(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    img = _image((8, 36, 32))
    kidney = _kaggle_kidney(tmp_path / "kaggle", img)
    out = tmp_path / "p.zarr"
    r = subprocess.run(CLI + ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-f", "3",
                              "-device", "cpu"], capture_output=True, text=True)
    assert r.returncode != 0 and "no fold_3/checkpoint_final.pth" in r.stderr
    (kidney / "images" / "0004.tif").unlink()
    r = subprocess.run(CLI + ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "missing slice 0004" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_converted_chunks_predict_like_the_kaggle_folder(tmp_path, kaggle_small, nnunet_dirs):
    """imagesTs z-chunks (memory-mapped 3D TIFF) are read as one kidney: same result as the slice folder."""
    from nnunet_vasculature.cli import main
    folder = make_model_folder(tmp_path / "model")
    assert main(["convert", "sennet", str(kaggle_small), "-d", "520", "--kidneys", "kidney_5",
                 "--chunk_slices", "13"]) == 0
    ts = nnunet_dirs["raw"] / "Dataset520_SenNet" / "imagesTs"
    assert len(list(ts.glob("*_0000.tif"))) == 4
    args = ["-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(["predict", "-i", str(ts), "-o", str(tmp_path / "a.zarr"), *args]) == 0
    assert main(["predict", "-i", str(kaggle_small / "test" / "kidney_5"), "-o", str(tmp_path / "b.zarr"), *args]) == 0
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["kidney_5"]
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["kidney_5"]
    np.testing.assert_array_equal(a[:], b[:])
    assert a.attrs["slice_ids"] == b.attrs["slice_ids"]


def test_compiled_network_gives_the_same_probabilities(tmp_path, monkeypatch):
    """nnUNet_compile=1 makes stock nnU-Net hand over a torch.compile'd network whose keys carry
    '_orig_mod.': the predictor must load the plain checkpoint keys into the module underneath."""
    from torch._dynamo.eval_frame import OptimizedModule
    folder = make_model_folder(tmp_path / "m")
    img = _image((16, 40, 40))
    plain = _ours(folder, img, (50.0, 50.0, 50.0), (0,), False)
    monkeypatch.setenv("nnUNet_compile", "1")
    pred = StreamingPredictor(folder, [0], device=torch.device("cpu"), use_mirroring=False)
    assert all(isinstance(n, OptimizedModule) for n in pred.nets)
    compiled = _ours(folder, img, (50.0, 50.0, 50.0), (0,), False, predictor=pred)
    assert np.abs(compiled - plain).max() <= 1e-4
