"""Prediction of slabs [start, end) and on several dask workers: same bytes as one process, resume by
slab, parameter check, a lost worker. Small volumes, tiny networks, CPU, one torch thread per worker."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers.model import make_model_folder
from helpers.predict import _image, _kaggle_kidney, _ours

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunet_vasculature.io.volume_source import VolumeSource


def _options(folder, **kw):
    return PredictionOptions.of(folder, [0], tta=False, **kw)


def _planes(pred, img, spacing, start=0, end=None, scan=None):
    return _ours(None, img, spacing, None, False, start, predictor=pred, end=end, scan=scan)


@pytest.mark.parametrize("model_spacing", [(50.0, 50.0, 50.0), (63.08, 63.08, 63.08)])
def test_end_gives_the_planes_of_a_full_run(tmp_path, model_spacing):
    """[start, end) slabs, put together, are bitwise the whole-volume run (same grid and resampled)."""
    folder = make_model_folder(tmp_path / "m", spacing=model_spacing)
    pred = StreamingPredictor(_options(folder), torch.device("cpu"))
    img = _image((40, 36, 34), seed=7)
    img[:5] = 0          # zero planes outside the crop box on both ends
    img[-3:] = 0
    sp = (50.0,) * 3
    full = _planes(pred, img, sp)
    scan = pred.scan(VolumeSource("v", img.shape, sp, [], [(0, 40, lambda a, b: img[a:b])]))
    for a, b in [(0, 3), (3, 11), (11, 23), (23, 38), (38, 40), (17, 18), (0, 40), (30, 99)]:
        np.testing.assert_array_equal(_planes(pred, img, sp, a, b, scan), full[a:b], err_msg=f"[{a}, {b})")
    assert _planes(pred, img, sp, 12, 12).shape[0] == 0


# ---- on dask workers ---------------------------------------------------------------------------
def _warm():
    import nnunetv2.inference.predict_from_raw_data  # noqa: F401


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each: what `predict --workers 2` starts on CPU; started by the first
    test that asks for it and shared by the module's dask tests (the others run without it)."""
    from nnunet_vasculature.inference.distributed import _connect
    client, cluster = _connect(2, None, None, "cpu")
    warm = [client.submit(_warm, workers=[w], pure=False) for w in client.scheduler_info()["workers"]]
    yield cluster.scheduler_address
    del warm
    client.close()
    cluster.close()


def _fail_on(kidney, slab, fail):
    if slab == fail:
        raise RuntimeError(f"injected failure in slab {slab}")


def _kill_once(kidney, slab, marker, victim):
    """Kill this worker process the first time slab `victim` runs."""
    if slab == victim and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)


def _reference(tmp_path, kidney, folder):
    from nnunet_vasculature.inference.predict import predict
    out = predict(kidney, tmp_path / "ref.zarr", _options(folder), "cpu")
    return zarr.open_group(str(out), mode="r")


def _run(kidney, out, folder, address, **kw):
    from nnunet_vasculature.inference.distributed import predict_distributed
    kw = {"slab_planes": 8, "retries": 0, "torch_threads": 1, **kw}
    options = _options(folder, **{k: kw.pop(k) for k in ("step_size",) if k in kw})
    return predict_distributed(kidney, out, options, "cpu", scheduler_address=address, **kw)


def test_cli_two_workers_equal_one_process(tmp_path, cluster):
    """Two kidneys as one task list (slabs of 8 planes): the same store bytes as single-process predict."""
    from nnunet_vasculature.cli import main
    from nnunet_vasculature.io.volumes import open_probabilities
    folder = make_model_folder(tmp_path / "m")
    _kaggle_kidney(tmp_path / "k", _image((30, 36, 32), seed=5), "kidney_5")
    test = _kaggle_kidney(tmp_path / "k", _image((21, 34, 36), seed=6), "kidney_6").parent
    args = ["-m", str(folder), "-device", "cpu", "--disable_tta"]
    assert main(["predict", "-i", str(test), "-o", str(tmp_path / "one.zarr"), *args]) == 0
    assert main(["predict", "-i", str(test), "-o", str(tmp_path / "many.zarr"), *args, "--scheduler", cluster,
                 "--slab_planes", "8"]) == 0
    one, many = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r") for n in ("one", "many"))
    for k in ("kidney_5", "kidney_6"):
        np.testing.assert_array_equal(many[k][:], one[k][:])
        assert many[k].attrs["complete"] and many[k].attrs["planes_done"] == one[k].shape[0]
        for a in ("slice_ids", "spacing", "source", "encoding"):
            assert many[k].attrs[a] == one[k].attrs[a]
        open_probabilities(tmp_path / "many.zarr" / k)      # readers accept it
    assert list(many["_slabs"]["kidney_6"][:]) == [1, 1, 1]


def test_interrupted_run_resumes_only_missing_slabs(tmp_path, cluster):
    import shutil
    from functools import partial

    from nnunet_vasculature.inference.predict import predict
    from nnunet_vasculature.io.volumes import open_probabilities
    folder = make_model_folder(tmp_path / "m")
    kidney = _kaggle_kidney(tmp_path / "k", _image((30, 36, 32), seed=5))
    ref = _reference(tmp_path, kidney, folder)["kidney_5"][:]
    out = tmp_path / "p.zarr"
    with pytest.raises(UserError, match=r"1 slab\(s\) failed .*injected failure in slab 2.*run the same command again"):
        _run(kidney, out, folder, cluster, on_slab=partial(_fail_on, fail=2))
    arr = zarr.open_group(str(out), mode="r")["kidney_5"]
    assert not arr.attrs["complete"] and arr.attrs["planes_done"] == 16
    with pytest.raises(UserError, match="incomplete"):
        open_probabilities(out / "kidney_5")
    # single-process predict finishes it from planes_done
    shutil.copytree(out, tmp_path / "copy.zarr")
    predict(kidney, tmp_path / "copy.zarr", _options(folder), "cpu")
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "copy.zarr"), mode="r")["kidney_5"][:], ref)
    # the rerun computes slab 2 only
    assert _run(kidney, out, folder, cluster) == {"kidney_5": [2]}
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)
    # a lost slab (mark and planes): only it is computed again
    g = zarr.open_group(str(out), mode="a")
    g["kidney_5"][8:16] = 0
    g["_slabs"]["kidney_5"][1] = 0
    g["kidney_5"].attrs["complete"] = False
    assert _run(kidney, out, folder, cluster) == {"kidney_5": [1]}
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)
    assert _run(kidney, out, folder, cluster) == {}      # complete: nothing to do


def test_changed_parameters_are_refused(tmp_path, cluster):
    folder = make_model_folder(tmp_path / "m")
    kidney = _kaggle_kidney(tmp_path / "k", _image((10, 36, 32), seed=1))
    out = tmp_path / "p.zarr"
    assert _run(kidney, out, folder, cluster) == {"kidney_5": [0, 1]}
    for kw, what in (({"slab_planes": 5}, "slab_planes"), ({"step_size": 0.75}, "step_size"),
                     ({"spacing": 40.0}, "spacing")):
        with pytest.raises(UserError, match=f"'kidney_5' holds a complete prediction made with other settings "
                                            f"\\({what} differ"):
            _run(kidney, out, folder, cluster, **kw)
    assert _run(kidney, out, folder, cluster, slab_planes=5, overwrite=True) == {"kidney_5": [0, 1]}
    assert zarr.open_group(str(out), mode="r")["kidney_5"].attrs["complete"]
    # a kidney finished by single-process predict with the same options is kept; an interrupted one, without
    # slab marks, is refused
    from nnunet_vasculature.inference.predict import predict
    predict(kidney, tmp_path / "one.zarr", _options(folder), "cpu")
    assert _run(kidney, tmp_path / "one.zarr", folder, cluster) == {}
    zarr.open_group(str(tmp_path / "one.zarr"), mode="a")["kidney_5"].attrs["complete"] = False
    with pytest.raises(UserError, match="made without --workers"):
        _run(kidney, tmp_path / "one.zarr", folder, cluster)


def test_killed_worker_costs_only_its_slab(tmp_path, cluster):
    """A worker process that dies mid-run: dask reschedules its slab on a (restarted) worker."""
    from functools import partial
    folder = make_model_folder(tmp_path / "m")
    kidney = _kaggle_kidney(tmp_path / "k", _image((30, 36, 32), seed=5))
    ref = _reference(tmp_path, kidney, folder)["kidney_5"][:]
    marker = tmp_path / "killed"
    out = tmp_path / "p.zarr"
    assert _run(kidney, out, folder, cluster, retries=2,
                on_slab=partial(_kill_once, marker=str(marker), victim=1)) == {"kidney_5": [0, 1, 2, 3]}
    assert marker.exists()
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)


def test_ngff_output_from_an_n5_store_resumes_by_chunk_aligned_slab(tmp_path, cluster, monkeypatch):
    """An HOA-layout N5 input (written by tensorstore) into an .ome.zarr on two workers: slabs are whole
    output chunk rows, a failed slab leaves the image incomplete, the rerun computes only that slab, and the
    client builds the pyramid: level 0 and 1 equal single-process predict's, valid NGFF."""
    from functools import partial

    from helpers.hoa import mean2, write_hoa_n5
    from ome_zarr_models.v04 import Image

    from nnunet_vasculature.inference import distributed
    from nnunet_vasculature.inference.predict import predict
    monkeypatch.setattr(distributed, "NGFF_CHUNK_DEPTH", 8)      # 4 slabs of 8 planes on a 30-plane volume
    folder = make_model_folder(tmp_path / "m")
    volume = _image((60, 144, 136), seed=5).astype(np.uint16)
    store = write_hoa_n5(tmp_path / "organ_n5", [volume, mean2(volume)], 25.0, block=(16, 32, 32))
    ref = zarr.open_group(str(predict(store, tmp_path / "one.ome.zarr", _options(folder), "cpu")), mode="r")
    out = tmp_path / "many.ome.zarr"
    with pytest.raises(UserError, match="1 slab\\(s\\) failed"):
        _run(store, out, folder, cluster, slab_planes=5, on_slab=partial(_fail_on, fail=2))
    image = zarr.open_group(str(out), mode="r")
    assert not image.attrs["nnunet_vasculature"]["complete"] and list(image["_slabs/organ_n5"][:]) == [1, 1, 0, 1]
    assert image["0"].chunks[0] == 8 and image["0"].shape == (30, 72, 68) and "1" in ref
    assert _run(store, out, folder, cluster, slab_planes=5) == {"organ_n5": [2]}
    image = zarr.open_group(str(out), mode="r")
    assert image.attrs["nnunet_vasculature"]["complete"] and "_slabs" not in image
    for level in ("0", "1"):
        np.testing.assert_array_equal(image[level][:], ref[level][:])
    Image.from_zarr(image)
    assert image.attrs["multiscales"] == ref.attrs["multiscales"]
    assert _run(store, out, folder, cluster, slab_planes=5) == {}
    # a complete image made with other settings is refused, not skipped as done
    with pytest.raises(UserError, match="complete prediction made with other settings"):
        _run(store, out, folder, cluster, slab_planes=5, step_size=0.75)


@pytest.mark.slow
def test_a_failed_slab_is_one_line_without_the_workers_tracebacks(tmp_path, capfd):
    """`--workers N`: dask logs every failed task with its traceback on the workers' stderr; the user saw those
    before the one line that says what failed."""
    from nnunet_vasculature.cli import main
    folder = make_model_folder(tmp_path / "m")
    kidney = _kaggle_kidney(tmp_path / "k", _image((24, 30, 28), seed=7), "kidney_5")
    bad = sorted((kidney / "images").glob("*.tif"))[20]
    bad.write_bytes(bad.read_bytes()[:200])                      # a truncated slice inside slab 2
    capfd.readouterr()
    assert main(["predict", "-i", str(kidney), "-o", str(tmp_path / "o.zarr"), "-m", str(folder),
                 "-device", "cpu", "--disable_tta", "--workers", "2", "--slab_planes", "8"]) == 2
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and bad.name in errors[0], err
    assert "Traceback" not in err and "Compute Failed" not in err, err
