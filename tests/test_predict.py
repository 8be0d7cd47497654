"""Streaming prediction vs stock nnUNetPredictor on whole volumes, zarr output, resume, bad input, the
model loader (weights-only checkpoints, device check), the input fingerprint and missing chunks."""
import os
import shutil

import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers.model import make_model_folder
from helpers.predict import _compare, _image, _kaggle_kidney, _ours, _stock, stock_format_checkpoint

from nnunet_vasculature.cli import main
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor


def _main(capsys, args):
    """Exit code, stderr lines, stdout of the in-process CLI."""
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines(), out.out

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


@pytest.mark.slow
def test_cli_zarr_output_resume_and_refusal(tmp_path, capsys):
    folder = make_model_folder(tmp_path / "model")
    img = _image((30, 36, 32), seed=5)
    kidney = _kaggle_kidney(tmp_path / "kaggle", img)
    out = tmp_path / "probs.zarr"
    base = ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    rc, err, _ = _main(capsys, base)
    assert rc == 0, err
    arr = zarr.open_group(str(out), mode="r")["kidney_5"]
    assert arr.dtype == np.uint8 and arr.shape == (30, 36, 32)
    assert arr.attrs["complete"] and arr.attrs["slice_ids"][3] == "kidney_5_0003"
    assert arr.attrs["spacing"] == [50.28] * 3
    ref = _ours(folder, img.astype(np.uint16).astype(np.float32), (50.28,) * 3, (0,), False)
    ref = np.rint(ref * 255).astype(np.uint8)
    np.testing.assert_array_equal(arr[:], ref)
    # the explicit word names the same command: the finished kidney is kept
    rc, err, stdout = _main(capsys, ["predict", "sennet", *base[1:]])
    assert rc == 0 and f"kidney_5: already complete in {out} (same options and input), skipped" in stdout, err
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)
    # an interrupted run resumes from the planes already written
    g = zarr.open_group(str(out), mode="a")
    g["kidney_5"].attrs.update({"complete": False, "planes_done": 16})
    g["kidney_5"][16:] = 0
    rc, err, stdout = _main(capsys, base)
    assert rc == 0 and "resuming kidney_5 at plane 16" in stdout
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)


def test_cli_bad_input(tmp_path, capsys):
    folder = make_model_folder(tmp_path / "model")
    img = _image((8, 36, 32))
    kidney = _kaggle_kidney(tmp_path / "kaggle", img)
    out = tmp_path / "p.zarr"
    args = ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu"]
    rc, err, _ = _main(capsys, [*args, "-f", "3"])
    assert rc == 2 and err == [f"error: {folder}: no fold_3/checkpoint_final.pth (present: fold_0)"]
    (kidney / "images" / "0004.tif").unlink()
    rc, err, _ = _main(capsys, args)
    assert rc == 2 and len(err) == 1 and "missing slice 0004" in err[0] and not out.exists()
    # a flag of another competition's predict is an argparse error
    with pytest.raises(SystemExit):
        main([*args, "--all_tiles"])


def test_resume_refuses_another_input(tmp_path, capsys):
    """An interrupted store is resumed only on the same input: other slices with the same kidney name and
    shape are refused in one line (before: resumed, and the store completed with planes of two inputs)."""
    folder = make_model_folder(tmp_path / "model")
    kidney = _kaggle_kidney(tmp_path / "a", _image((12, 36, 32), seed=1))
    out = tmp_path / "p.zarr"
    args = ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(args) == 0
    g = zarr.open_group(str(out), mode="a")
    g["kidney_5"].attrs.update({"complete": False, "planes_done": 4})         # as after Ctrl-C at plane 4
    shutil.rmtree(kidney)
    _kaggle_kidney(tmp_path / "a", _image((12, 36, 32), seed=2))               # other slices, same name and shape
    rc, err, _ = _main(capsys, args)
    assert rc == 2 and err == [f"error: {out}: 'kidney_5' holds an interrupted run of another input (its files, "
                               f"sizes or content differ; pass --overwrite to start again)"]
    assert not zarr.open_group(str(out), mode="r")["kidney_5"].attrs["complete"]


def test_missing_chunk_is_refused(tmp_path, capsys):
    """A deleted chunk of a complete store (zarr reads it as zeros) is refused by the readers in one line."""
    from nnunet_vasculature.io.volumes import open_probabilities
    folder = make_model_folder(tmp_path / "model")
    img = _image((10, 36, 32), seed=3)
    img[:3] = 0                  # all-zero planes: their chunks are stored too
    kidney = _kaggle_kidney(tmp_path / "a", img)
    out = tmp_path / "p.zarr"
    assert main(["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu",
                 "--disable_tta"]) == 0
    open_probabilities(out / "kidney_5")
    chunks = sorted(p for p in (out / "kidney_5" / "c").rglob("*") if p.is_file())
    assert len(chunks) == 10
    chunks[1].unlink()           # a background plane's chunk
    with pytest.raises(UserError, match=r"^.*kidney_5: 1 of 10 chunks are missing \(chunk c/1/0/0 "):
        open_probabilities(out / "kidney_5")


def test_workers_beyond_the_cores_are_one_line_before_the_model_loads(tmp_path, capsys):
    """`--workers N` with N above this machine's cores is refused in one line before any worker starts or the
    model loads (before: N worker processes were started; the checkpoint is unreadable here, so a run that
    loaded the model would end in another error)."""
    folder = make_model_folder(tmp_path / "model")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    kidney = _kaggle_kidney(tmp_path / "k", _image((8, 36, 32)))
    cores = len(os.sched_getaffinity(0))
    rc, err, _ = _main(capsys, ["predict", "-i", str(kidney), "-o", str(tmp_path / "p.zarr"), "-m", str(folder),
                                "-device", "cpu", "--workers", str(cores + 1)])
    assert rc == 2 and err == [f"error: --workers {cores + 1}: this machine has {cores} cores; use at most {cores}, "
                               f"or --scheduler ADDRESS for a cluster"], err
    assert not (tmp_path / "p.zarr").exists()


def test_checkpoint_running_code_is_refused(tmp_path, capsys):
    """A checkpoint whose pickle calls os.system is refused in one line and the command does not run."""
    folder = make_model_folder(tmp_path / "model")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    stock_format_checkpoint(folder / "fold_0" / "checkpoint_final.pth", extra=Payload())
    kidney = _kaggle_kidney(tmp_path / "k", _image((8, 36, 32)))
    rc, err, _ = _main(capsys, ["predict", "-i", str(kidney), "-o", str(tmp_path / "p.zarr"), "-m", str(folder),
                                "-device", "cpu"])
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {folder / 'fold_0' / 'checkpoint_final.pth'}: refused") and "system" in err[0]
    assert "weights_only" not in err[0]
    assert not marker.exists()
    with pytest.raises(UserError, match="refused"):
        StreamingPredictor(PredictionOptions.of(folder), torch.device("cpu"))


def test_stock_format_checkpoint_loads_weights_only(tmp_path):
    """Everything stock nnUNetTrainer.save_checkpoint writes (optimizer, logger with numpy scalars,
    torch.device) is within the allowlist; the prediction is stock nnU-Net's."""
    folder = make_model_folder(tmp_path / "model")
    stock_format_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    img = _image((20, 36, 32), seed=6)
    _compare(_ours(folder, img, (50.0,) * 3, (0,), False), _stock(folder, img, (50.0,) * 3, (0,), False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_one_line(tmp_path, capsys):
    folder = make_model_folder(tmp_path / "model")
    kidney = _kaggle_kidney(tmp_path / "k", _image((8, 36, 32)))
    rc, err, _ = _main(capsys, ["predict", "-i", str(kidney), "-o", str(tmp_path / "p.zarr"), "-m", str(folder)])
    assert rc == 2 and err == ["error: -device cuda: CUDA is not available here; pass -device cpu"]
    slide = tmp_path / "s.tiff"
    tifffile.imwrite(slide, np.zeros((64, 64, 3), np.uint8))
    # predict hubmap-kidney's default device (before: a traceback from torch in the slide predictor)
    rc, err, _ = _main(capsys, ["predict", "hubmap-kidney", "-i", str(slide), "-o", str(tmp_path / "o"), "-m",
                                str(folder)])
    assert rc == 2 and err == ["error: -device cuda: CUDA is not available here; pass -device cpu"]
    from nnunet_vasculature.inference.slide import SlidePredictor
    with pytest.raises(UserError, match="CUDA is not available"):
        SlidePredictor(PredictionOptions.of(folder, ["0"]), device="cuda")


def test_slide_info_file_is_used_or_refused(tmp_path, capsys):
    """``--info FILE`` is read whatever its name; a missing one or a folder is one line (before: skipped)."""
    from nnunet_vasculature.inference.slide import slide_sizes
    slide = tmp_path / "slides" / "aa05346ff.tiff"
    slide.parent.mkdir()
    tifffile.imwrite(slide, np.zeros((64, 80, 3), np.uint8))
    info = tmp_path / "sizes.csv"
    info.write_text("image_file,width_pixels,height_pixels,patient_number\naa05346ff.tiff,81,64,1\n")
    assert slide_sizes(info, tmp_path)["aa05346ff"]["width"] == 81
    args = ["predict", "hubmap-kidney", "-i", str(slide), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "m"),
            "-device", "cpu"]
    rc, err, _ = _main(capsys, [*args, "--info", str(tmp_path / "nope.csv")])
    assert rc == 2 and err == [f"error: {tmp_path / 'nope.csv'}: --info file not found"]
    rc, err, _ = _main(capsys, [*args, "--info", str(tmp_path)])
    assert rc == 2 and len(err) == 1 and "--info must be a CSV file" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_converted_chunks_predict_like_the_kaggle_folder(tmp_path, kaggle_small, nnunet_dirs):
    """imagesTs z-chunks (memory-mapped 3D TIFF) are read as one kidney: same result as the slice folder."""
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
    pred = StreamingPredictor(PredictionOptions.of(folder, tta=False), torch.device("cpu"))
    assert all(isinstance(n, OptimizedModule) for n in pred.nets)
    compiled = _ours(folder, img, (50.0, 50.0, 50.0), (0,), False, predictor=pred)
    assert np.abs(compiled - plain).max() <= 1e-4
