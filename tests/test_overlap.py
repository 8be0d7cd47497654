"""Overlapped streaming prediction (input and writer threads): the same bytes as the serial run, each input
plane read once, errors and Ctrl-C from any thread reach the caller, no thread left behind."""
import _thread
import faulthandler
import json
import signal
import threading
import time

import numpy as np
import pytest
import torch
import zarr
from helpers.model import make_model_folder
from helpers.predict import _image, _kaggle_kidney, _ours

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference import nnunet_compat as compat
from nnunet_vasculature.inference.geometry import StreamingGeometry
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import ModelInput, StreamingPredictor
from nnunet_vasculature.io.volume_source import VolumeSource

SP = (50.0, 50.0, 50.0)


@pytest.fixture(autouse=True)
def no_hang():
    """A hang (a thread waiting for an item that never comes) fails the run instead of blocking CI."""
    faulthandler.dump_traceback_later(240, exit=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # the helper threads take the other core
    yield
    torch.set_num_threads(threads)
    faulthandler.cancel_dump_traceback_later()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("streaming-")], "threads left running"


def _folder(tmp_path, folds=(0,), transpose=None, **kw):
    folder = make_model_folder(tmp_path / "m", folds=folds, **kw)
    if transpose is not None:
        plans = json.loads((folder / "plans.json").read_text())
        plans["transpose_forward"] = plans["transpose_backward"] = transpose
        (folder / "plans.json").write_text(json.dumps(plans))
    return folder


def _pred(folder, folds=(0,), tta=False, overlap=True, queue_depth=1):
    return StreamingPredictor(PredictionOptions.of(folder, folds, tta=tta), torch.device("cpu"),
                                           overlap=overlap, queue_depth=queue_depth)


def _src(img, spacing=SP, read=None):
    return VolumeSource("v", img.shape, spacing, [str(i) for i in range(img.shape[0])],
                        [(0, img.shape[0], read or (lambda a, b: img[a:b]))])


@pytest.mark.parametrize("model_spacing,spacing,transpose,folds,tta,depth", [
    ((63.08,) * 3, SP, [0, 2, 1], (0,), True, 1),             # resampled both ways, transposed, mirroring TTA
    ((63.08,) * 3, (200.0, 50.0, 50.0), None, (0, 1), False, 2),   # separate-z resampling, two folds
])
def test_overlapped_equals_serial_bitwise(tmp_path, model_spacing, spacing, transpose, folds, tta, depth):
    folder = _folder(tmp_path, folds, transpose, spacing=model_spacing)
    img = _image((36, 40, 38), seed=1)
    img[:4] = 0
    serial, pred = _pred(folder, folds, tta, overlap=False), _pred(folder, folds, tta, queue_depth=depth)
    for start, end in [(0, None), (5, 30)]:
        np.testing.assert_array_equal(_ours(None, img, spacing, None, None, start, predictor=pred, end=end),
                                      _ours(None, img, spacing, None, None, start, predictor=serial, end=end))
    assert set(pred.timings) == {"scan", "wall", "prepare", "network", "main", "write"}
    assert 0 < pred.timings["network"] <= pred.timings["main"] <= pred.timings["wall"]


@pytest.mark.parametrize("overlap", [True, False])
def test_each_input_plane_is_read_once(tmp_path, overlap):
    """The resampling halo shared by neighbouring blocks is kept, not read and resized again."""
    folder = _folder(tmp_path, spacing=(63.08,) * 3)
    img = _image((60, 30, 28), seed=2)
    reads = np.zeros(len(img), int)

    def read(a, b):
        reads[a:b] += 1
        return img[a:b]
    pred = _pred(folder, overlap=overlap)
    scan = pred.scan(_src(img))
    pred.predict(_src(img, read=read), lambda z, p: None, scan=scan)
    assert reads.tolist() == [1] * len(img)


def test_kept_planes_equal_blockwise_resampling(tmp_path):
    """Windows built from the kept planes equal the block-by-block resampling of the whole input."""
    img = _image((50, 24, 20), seed=3).astype(np.float32)
    crop_shape, model_shape = img.shape, (63, 30, 25)
    resampling = compat.Resampling(False, None, 3, 0)
    norm = compat.zscore_normalizer(float(img.mean()), float(img.std()))
    value_range = (float(norm(img).min()), float(norm(img).max()))
    patch_depth, pad, padded = 16, (0, 1, 3), (63, 32, 32)
    starts = (0, 8, 16, 24, 32, 40, 47)
    geometry = StreamingGeometry(img.shape, ((0, 50), (0, 24), (0, 20)), (0, 1, 2), (0, 1, 2), crop_shape, model_shape,
                                 padded, pad, (patch_depth, 32, 32), (starts, (0,), (0,)), resampling, resampling)
    inputs = ModelInput(geometry, lambda a, b: img[a:b], norm, value_range)
    ends = [min(model_shape[0], s + patch_depth) for s in starts]
    ref = np.zeros((model_shape[0] + 10, *padded[1:]), np.float32)       # model planes, padded in y and x
    for a, b in zip([0] + ends[:-1], ends):
        i0, i1 = compat.input_range(a, b, crop_shape[0], model_shape[0], 3)
        block = compat.resample_slab(norm(img[i0:i1]), i0, crop_shape[0], range(a, b), model_shape, resampling,
                                     value_range)
        ref[a:b, 1:31, 3:28] = block.astype(np.float32)
    for s in starts:
        np.testing.assert_array_equal(inputs.window(s).numpy(), ref[s:s + patch_depth])


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("overlap", [True, False])
def test_errors_in_the_sink_and_the_source_reach_the_caller(tmp_path, overlap):
    folder = _folder(tmp_path, spacing=(63.08,) * 3)
    img = _image((40, 30, 28), seed=4)
    pred = _pred(folder, overlap=overlap)
    scan = pred.scan(_src(img))

    def sink(z, p):          # runs in the writer thread when overlapped
        if z == 12:
            raise UserError("out.zarr: disk full")
    with pytest.raises(UserError) as e:
        pred.predict(_src(img), sink, scan=scan)
    assert str(e.value) == "out.zarr: disk full"

    def bad_sink(z, p):
        if z == 30:
            raise Boom("sink bug")
    with pytest.raises(Boom, match="^sink bug$"):
        pred.predict(_src(img), bad_sink, scan=scan)

    def read(a, b):          # runs in the input thread when overlapped
        if b > 25:
            raise UserError("slices/0025.tif: not a readable TIFF")
        return img[a:b]
    written = []
    with pytest.raises(UserError, match="^slices/0025.tif: not a readable TIFF$"):
        pred.predict(_src(img, read=read), lambda z, p: written.append(z), scan=scan)
    assert written == list(range(len(written)))      # the planes before the failure, in order


def test_ctrl_c_stops_the_run(tmp_path):
    folder = _folder(tmp_path, spacing=(63.08,) * 3)
    img = _image((40, 30, 28), seed=5)
    pred = _pred(folder)
    scan = pred.scan(_src(img))
    tiles = []

    def progress(n):         # Ctrl-C while the network runs
        tiles.append(n)
        if len(tiles) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        pred.predict(_src(img), lambda z, p: None, progress=progress, scan=scan)

    # Python's own SIGINT handler, as in the CLI (another test's library may have replaced it)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)

    def read(a, b):          # Ctrl-C while the caller waits for input from a slow source
        if a >= 20 and not interrupted:
            interrupted.append(1)
            _thread.interrupt_main()
            time.sleep(1.0)
        return img[a:b]
    interrupted = []
    t = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            pred.predict(_src(img, read=read), lambda z, p: None, scan=scan)
    finally:
        signal.signal(signal.SIGINT, old)
    assert interrupted and time.perf_counter() - t < 30


def test_cli_writer_error_is_one_line(tmp_path, capsys):
    """Non-finite probabilities (a broken checkpoint) are refused by the store writer in its thread: one
    line, exit 2, the kidney left incomplete."""
    from nnunet_vasculature.cli import main
    folder = _folder(tmp_path)
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    w = ckpt["network_weights"]
    head = [k for k in w if "seg_layers" in k and k.endswith("bias")][-1]
    w[head][:] = float("nan")
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    kidney = _kaggle_kidney(tmp_path / "k", _image((20, 36, 32), seed=6))
    out = tmp_path / "p.zarr"
    assert main(["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu",
                 "--disable_tta"]) == 2
    err = capsys.readouterr().err
    assert [e for e in err.splitlines() if e.startswith("error")] == \
        ["error: kidney_5 plane 0: probabilities are not finite (NaN or infinity)"]
    assert "Traceback" not in err
    assert not zarr.open_group(str(out), mode="r")["kidney_5"].attrs["complete"]
