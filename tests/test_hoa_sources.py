"""Multiscale inputs (issue 24): HOA-layout N5 and OME-Zarr 0.4 (x, y, z storage, translation before
scale), OME-Zarr 0.5, JPEG 2000 slice folders and ``hoa:NAME`` datasets.

Fixture stores are written by tensorstore / zarr / imagecodecs directly from the documented facts
(DOMAIN.md section 9), never by this package; ``hoa:`` datasets are read back through hoa-tools' own
catalogue (``change_metadata_directory``) and remote stores (gcsfs pointed at a loopback emulator by its
``STORAGE_EMULATOR_HOST`` variable, in a fresh interpreter because gcsfs reads its switches at import)."""
import json
import os
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import zarr
from helpers.hoa import HOA_BUCKET_PATH, TEST_NAME, mean2, write_hoa_n5, write_hoa_omezarr04, write_omezarr05

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.input_spec import open_volume
from nnunet_vasculature.io.pyramid import AlignedReader
from nnunet_vasculature.io.sennet_inputs import kaggle_kidney


@pytest.fixture
def volume():
    return np.random.default_rng(7).integers(0, 60000, (40, 36, 20), dtype=np.uint16)


def test_n5_hoa_layout(tmp_path, volume):
    levels = [volume, mean2(volume), mean2(mean2(volume))]
    store = write_hoa_n5(tmp_path / "25.0um_complete-organ_bm05", levels, 25.0, block=(16, 16, 16))
    lines = []
    v = open_volume(store, "auto", 50.0, log=lines.append)
    assert v.level == 1 and v.shape == (20, 18, 10) and v.spacing == (50.0, 50.0, 50.0)
    assert v.translation == (12.5, 12.5, 12.5)          # BigDataViewer mipmap: (2 - 1) / 2 level-0 voxels
    assert v.chunk_depth == 16 and "level 1 of 3" in lines[0] and "(20, 18, 10)" in lines[0]
    np.testing.assert_array_equal(v.read(0, 20), levels[1])
    v0 = open_volume(store, 0, log=None)
    np.testing.assert_array_equal(v0.read(5, 33), volume[5:33])
    assert v0.read(5, 33).dtype == np.float32
    assert open_volume(store, "auto", 120.0, log=None).level == 2     # 100 µm is nearer 120 than 50


def test_omezarr04_hoa_quirks(tmp_path, volume):
    levels = [volume, mean2(volume)]
    store = write_hoa_omezarr04(tmp_path / "organ.ome.zarr", levels, 25.0, chunk=16)
    v = open_volume(store, 1, log=None)
    assert v.shape == (20, 18, 10) and v.spacing == (50.0, 50.0, 50.0)
    assert v.translation == (25.0, 25.0, 25.0)          # translation 0.5 applied before scale 50
    assert v.chunk_depth == 16 and v.name == "organ"
    np.testing.assert_array_equal(v.read(3, 19), levels[1][3:19])
    np.testing.assert_array_equal(open_volume(store, 0, log=None).read(0, 40), volume)


def test_omezarr05_units(tmp_path, volume):
    from ome_zarr_models.v05 import Image
    store = write_omezarr05(tmp_path / "v05.ome.zarr", [volume, mean2(volume)], 5000.0)
    Image.from_zarr(zarr.open_group(str(store), mode="r"))     # the fixture is valid NGFF 0.5
    v = open_volume(store, "auto", 9.0, log=None)
    assert v.level == 1 and v.spacing == (10.0, 10.0, 10.0) and v.translation == (0.1, 0.1, 0.1)
    np.testing.assert_array_equal(v.read(0, 20), mean2(volume))


def test_kaggle_twin_reads_the_same_voxels(tmp_path, kaggle_small):
    """A HOA-layout store whose level 1 is a Kaggle kidney gives exactly the voxels of its TIFF slices."""
    folder = kaggle_small / "test" / "kidney_5"
    tiff = kaggle_kidney(folder)
    kidney = tiff.read(0, tiff.shape[0]).astype(np.uint16)
    spacing = tiff.spacing[0]
    fine = kidney.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    coarse = kidney[::2, ::2, ::2]
    n5 = write_hoa_n5(tmp_path / "twin_n5", [fine, kidney, coarse], spacing / 2)
    ome = write_hoa_omezarr04(tmp_path / "twin.ome.zarr", [fine, kidney, coarse], spacing / 2)
    for store in (n5, ome):
        v = open_volume(store, "auto", spacing, log=None)
        assert v.level == 1 and v.shape == tiff.shape and v.spacing == pytest.approx(tiff.spacing, rel=1e-12)
        read = v.read(0, v.shape[0])
        assert read.dtype == np.float32
        np.testing.assert_array_equal(read, tiff.read(0, tiff.shape[0]))


def test_jp2_folder(tmp_path, volume):
    import imagecodecs
    folder = tmp_path / "LADAF_kidney_25.08um_bm05_jp2"
    folder.mkdir()
    for z in range(12):      # numbers 8, 9, 10, 11: the order is numeric, not by name
        (folder / f"slice_{z}.jp2").write_bytes(imagecodecs.jpeg2k_encode(volume[z], level=0))   # lossless
    v = open_volume(folder, log=None)
    assert v.shape == (12, 36, 20) and v.spacing == (25.08, 25.08, 25.08)
    np.testing.assert_array_equal(v.read(2, 12), volume[2:12])
    assert open_volume(folder, spacing_um=10.0, log=None).spacing == (10.0, 10.0, 10.0)
    (folder / "slice_12.jp2").write_bytes(b"not a jpeg 2000 file")
    with pytest.raises(UserError, match="slice_12.jp2: not a readable JPEG 2000"):
        open_volume(folder, log=None).read(0, 13)


def test_reads_are_chunk_aligned():
    calls = []
    data = np.arange(300 * 2 * 2, dtype=np.uint16).reshape(300, 2, 2)

    def read_block(z0, z1):
        calls.append((z0, z1))
        return data[z0:z1]
    reader = AlignedReader(read_block, 300, 128, keep=2)
    for z0 in range(0, 300, 16):                      # the predictor's scan: 16-plane blocks
        np.testing.assert_array_equal(reader(z0, min(300, z0 + 16)), data[z0:z0 + 16])
    assert calls == [(0, 128), (128, 256), (256, 300)]
    np.testing.assert_array_equal(reader(250, 270), data[250:270])    # across a chunk border, both kept
    assert len(calls) == 3
    np.testing.assert_array_equal(reader(100, 120), data[100:120])    # row 0 was let go: read again, whole
    assert calls[3:] == [(0, 128)]


def _bad(tmp_path, volume, edit):
    store = write_hoa_n5(tmp_path / "bad", [volume, mean2(volume)], 25.0, block=(16, 16, 16))
    edit(store)
    return store


@pytest.mark.parametrize("edit, message", [
    (lambda s: None, "level 5 does not exist"),
    (lambda s: _edit_json(s / "attributes.json", axes=["x", "y"]), "axes"),
    (lambda s: _edit_json(s / "s1" / "attributes.json", dimensions=[10, 18]), "do not match the axes"),
    (lambda s: _edit_json(s / "s1" / "attributes.json", dimensions=[10, 18, 40]), "contradict"),
    (lambda s: _edit_json(s / "attributes.json", downsamplingFactors=None), "downsamplingFactors"),
    (lambda s: _drop_key(s / "attributes.json", "resolution"), "no 'resolution'"),
    (lambda s: _edit_json(s / "attributes.json", units=["parsec"] * 3), "unit 'parsec'"),
    (lambda s: _edit_json(s / "s0" / "attributes.json", dataType="uint64"), "uint64 is not supported"),
])
def test_bad_stores_one_line(tmp_path, volume, edit, message):
    store = _bad(tmp_path, volume, edit)
    with pytest.raises(UserError, match=message) as e:
        open_volume(store, 5 if message.startswith("level 5") else "auto", log=None)
    assert "\n" not in str(e.value) and str(store) in str(e.value)


def _edit_json(file, **changes):
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def _drop_key(file, key):
    attrs = json.loads(file.read_text())
    del attrs[key]
    file.write_text(json.dumps(attrs))


def test_omezarr_unsupported_dtype_and_axes(tmp_path):
    group = zarr.open_group(str(tmp_path / "c.ome.zarr"), mode="w", zarr_format=3)
    group.create_array("0", shape=(4, 4, 4), dtype="complex64")
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    ms = {"name": "c", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}
    group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    with pytest.raises(UserError, match="complex64 is not supported"):
        open_volume(tmp_path / "c.ome.zarr", log=None)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{**ms, "axes": axes[1:]}]}
    with pytest.raises(UserError, match="2 space axes"):
        open_volume(tmp_path / "c.ome.zarr", log=None)


def test_hoa_name_errors(monkeypatch):
    pytest.importorskip("hoa_tools")
    with pytest.raises(UserError, match="did you mean LADAF-2021-17_kidney_right_complete-organ_25.0um_bm05"):
        open_volume("hoa:LADAF-2021-17_kidney_right_complete-organ_25um_bm05", log=None)
    monkeypatch.delenv("NNUNET_VASCULATURE_HOA_MIRROR", raising=False)
    with pytest.raises(UserError, match="stored remotely .*pass --remote"):
        open_volume("hoa:LADAF-2021-17_kidney_right_complete-organ_25.0um_bm05", log=None)
    monkeypatch.setitem(sys.modules, "hoa_tools.dataset", None)      # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install 'nnunet-vasculature\[hoa\]'"):
        open_volume("hoa:anything", log=None)


HOA_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
import hoa_tools.dataset as hd
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.input_spec import open_volume
meta_dir, name, remote_level, compare = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "compare"
hd.change_metadata_directory(Path(meta_dir))        # hoa-tools' public way to another catalogue
out = {}
try:
    if not compare:
        open_volume("hoa:" + name, remote_level, remote=True, log=None)
    theirs = hd.get_dataset(name).data_array(downsample_level=remote_level).values
    ours = open_volume("hoa:" + name, remote_level, remote=True, log=None)
    out["equal_remote"] = bool((ours.read(0, ours.shape[0]) == theirs).all())
    out["remote_shape"] = list(ours.shape)
    out["provenance"] = ours.provenance
    auto = open_volume("hoa:" + name, "auto", 50.0, remote=False, log=None)    # the mirror (env)
    out["mirror_level"], out["mirror_spacing"] = auto.level, list(auto.spacing)
    out["mirror_equal"] = bool((auto.read(0, auto.shape[0]) == open_volume(
        "hoa:" + name, auto.level, remote=True, log=None).read(0, auto.shape[0])).all())
except UserError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def _hoa_catalogue(tmp_path, um, url):
    """hoa-tools' metadata of a real kidney renamed and pointed at the test bucket."""
    meta_dir = tmp_path / f"meta{um}"
    meta_dir.mkdir()
    real = resources.files("hoa_tools") / "data" / "metadata" / "metadata" / \
        "LADAF-2021-17_kidney_right_complete-organ_25.0um_bm05.json"
    meta = json.loads(real.read_text())
    meta["name"] = TEST_NAME.format(um=um)
    meta["data"] = {**meta["data"], "voxel_size_um": float(um), "gcs_url": url}
    (meta_dir / f"{meta['name']}.json").write_text(json.dumps(meta))
    return meta_dir, meta


def _run_hoa(tmp_path, meta_dir, name, level, host, compare=True, mirror=None, stderr=None):
    env = {**os.environ, "STORAGE_EMULATOR_HOST": host, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
           "NO_PROXY": "127.0.0.1,localhost",
           "NNUNET_VASCULATURE_HOA_MIRROR": str(mirror or tmp_path / "bucket" / "hoa-test")}
    run = subprocess.run([sys.executable, "-c", HOA_SCRIPT, str(meta_dir), name, str(level),
                          "compare" if compare else "ours"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    if stderr is not None:
        stderr.append(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fmt", ["n5", "zarr"])
def test_hoa_dataset_through_hoa_tools(tmp_path, volume, fmt):
    """hoa:NAME read remotely through hoa-tools' own stores equals hoa-tools' own array, and equals the
    local mirror read by this package's N5 / OME-Zarr readers (x, y, z storage included)."""
    pytest.importorskip("hoa_tools")
    from helpers.gcs_emulator import gcs_emulator
    um = 25.0
    path = HOA_BUCKET_PATH.format(um=um) + (".ome.zarr" if fmt == "zarr" else "")
    store = tmp_path / "bucket" / "hoa-test" / path
    store.parent.mkdir(parents=True)
    levels = [volume, mean2(volume)]
    (write_hoa_n5 if fmt == "n5" else write_hoa_omezarr04)(store, levels, um)
    meta_dir, meta = _hoa_catalogue(tmp_path, um, f"{fmt}://gs://hoa-test/{path}/")
    with gcs_emulator(tmp_path / "bucket") as (host, log):
        out = _run_hoa(tmp_path, meta_dir, meta["name"], 1, host)
    assert "error" not in out, out
    assert out["equal_remote"] and out["remote_shape"] == [20, 18, 10]
    assert out["provenance"]["doi"] == meta["citation"]["doi"] and out["provenance"]["level"] == 1
    assert out["mirror_level"] == 1 and out["mirror_spacing"] == [50.0] * 3 and out["mirror_equal"]
    assert any("attributes.json" in p or ".zattrs" in p for p in log)      # it did go through the emulator


def test_hoa_no_network(tmp_path):
    """--remote without network (a closed port) is one line within seconds, without gcsfs/aiohttp warnings
    (it took about 60 s of retries and printed ~50 lines before, issue 34.5)."""
    pytest.importorskip("hoa_tools")
    import socket
    import time
    meta_dir, meta = _hoa_catalogue(tmp_path, 25.0, "n5://gs://hoa-test/nowhere/")
    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started, stderr = time.monotonic(), []
    out = _run_hoa(tmp_path, meta_dir, meta["name"], 0, f"http://127.0.0.1:{port}", compare=False, stderr=stderr)
    assert "no network?" in out["error"] and "\n" not in out["error"]
    assert f"cannot reach 127.0.0.1:{port} within 5 s" in out["error"]
    assert time.monotonic() - started < 30          # the interpreter's start and imports included
    assert not [line for line in stderr[0].splitlines() if "Warning" in line or "Traceback" in line or
                "aiohttp" in line or "gcsfs" in line], stderr[0]


def test_hoa_store_is_read_by_hoa_tools(tmp_path):
    """``hoa-store`` writes what hoa-tools' own classes read (its catalogue schema, its N5 and OME-Zarr stores
    served as the bucket by the emulator), the same voxels as ``hoa:NAME`` read from the mirror (issue 34.4)."""
    pytest.importorskip("hoa_tools")
    from helpers.gcs_emulator import gcs_emulator

    from nnunet_vasculature.synthetic.hoa_store import BUCKET, write_hoa_store
    mirror = tmp_path / "bucket" / BUCKET
    names = write_hoa_store(mirror, voxel_um=25.0, levels=3, chunk=32)
    assert names == ["SYNTHETIC-01_kidney_right_complete-organ_25.0um_bm05",
                     "SYNTHETIC-01_kidney_left_complete-organ_25.0um_bm18"]
    root = json.loads((mirror / "SYNTHETIC-01/kidney-right/25.0um_complete-organ_bm05/attributes.json").read_text())
    assert root["axes"] == ["x", "y", "z"] and root["units"] == ["um"] * 3 and root["resolution"] == [25.0] * 3
    assert root["downsamplingFactors"] == [[1, 1, 1], [2, 2, 2], [4, 4, 4]]
    with gcs_emulator(tmp_path / "bucket") as (host, log):
        for name in names:
            out = _run_hoa(tmp_path, mirror / "metadata", name, 1, host, mirror=mirror)
            assert "error" not in out, out
            assert out["equal_remote"] and out["mirror_level"] == 1 and out["mirror_spacing"] == [50.0] * 3
            assert out["mirror_equal"] and out["provenance"]["dataset"] == name
    assert any("attributes.json" in p for p in log) and any(".zattrs" in p for p in log)


def test_hoa_silent_endpoint(tmp_path):
    """--remote through a host that accepts the connection and never answers (a silent proxy or endpoint) is
    one line within seconds: the reachability probe is a real HTTP request with a timeout. Before, the TCP
    connect passed and gcsfs waited on its reads with no timeout, printing nothing (issue 34.5)."""
    pytest.importorskip("hoa_tools")
    import socket
    import threading
    import time

    from helpers.model import make_model_folder
    mirror = tmp_path / "mirror"                     # holds only the catalogue entry: the voxels are remote
    meta_dir, meta = _hoa_catalogue(tmp_path, 25.0, "n5://gs://hoa-test/nowhere/")
    (mirror / "metadata").mkdir(parents=True)
    (mirror / "metadata" / f"{meta['name']}.json").write_text((meta_dir / f"{meta['name']}.json").read_text())
    model = make_model_folder(tmp_path / "model")
    listener, held = socket.socket(), []
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept_and_keep_silent():
        while True:
            try:
                held.append(listener.accept()[0])     # kept open, never answered
            except OSError:
                return
    threading.Thread(target=accept_and_keep_silent, daemon=True).start()
    port = listener.getsockname()[1]
    env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "NNUNET_VASCULATURE_HOA_MIRROR":
           str(mirror), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_PROXY": "127.0.0.1"}
    started = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-m", "nnunet_vasculature.cli", "predict", "-i", f"hoa:{meta['name']}",
                              "--remote", "--level", "0", "--dry_run", "-m", str(model), "-device", "cpu"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("predict --remote hung on an endpoint that never answers")
    finally:
        listener.close()
        for connection in held:
            connection.close()
    elapsed = time.monotonic() - started
    assert held, "the command never connected to the silent endpoint"
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0 and len(errors) == 1, run.stderr[-2000:]
    assert f"cannot reach 127.0.0.1:{port} within 5 s (no answer)" in errors[0], errors
    assert elapsed < 20, elapsed              # the interpreter's start and imports included
