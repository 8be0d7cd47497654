"""``view`` (issue 34.9): the server sends the CORS header Neuroglancer needs and byte ranges of a chunk, and the
printed link's state names the three layers with their sources and the output's NGFF scale. Stores are written by
zarr directly (and HOA's layout by tests/helpers/hoa.py), not by our writer; no browser here (that is
benchmarks/neuroglancer_check.py)."""
import http.client
import json
import sys
import threading
from urllib.parse import unquote

import numpy as np
import pytest
import zarr
from helpers.hoa import mean2, write_hoa_omezarr04, write_omezarr05

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.view import TOKEN, client_folder, make_server, read_image, viewer_link, viewer_state


def _ngff04_output(folder, shape=(8, 12, 10), spacing=50.0, translation=12.5, labels=True):
    """An NGFF 0.4 (z, y, x) probability image as predict lays it out, with labels/vessels, written by zarr."""
    from numcodecs import Blosc
    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, shape, dtype=np.uint8)
    transforms = [{"type": "scale", "scale": [spacing] * 3}, {"type": "translation", "translation": [translation] * 3}]
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    arr = group.create_array("0", shape=shape, chunks=(4, 6, 5), dtype="uint8", compressors=Blosc(cname="zstd"),
                             chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[:] = values
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                   "datasets": [{"path": "0", "coordinateTransformations": transforms}]}]
    if labels:
        vessels = group.require_group("labels").require_group("vessels")
        mask = vessels.create_array("0", shape=shape, chunks=(4, 6, 5), dtype="uint8")
        mask[:] = values > 200
        vessels.attrs.put({"multiscales": [{"version": "0.4", "axes": axes, "datasets": [
            {"path": "0", "coordinateTransformations": transforms}]}],
            "image-label": {"version": "0.4", "colors": [{"label-value": 1, "rgba": [255, 0, 0, 255]}]}})
        group["labels"].attrs["labels"] = ["vessels"]
    return folder


@pytest.fixture
def served(tmp_path):
    output = _ngff04_output(tmp_path / "pred.ome.zarr")
    client = tmp_path / "client"
    client.mkdir()
    (client / "index.html").write_text("<html></html>")
    server = make_server({"output": output}, client, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], output
    server.stopping.set()
    server.shutdown()
    server.server_close()


def _get(port, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read() if response.getheader("Content-Type") != "text/event-stream" else b""
    connection.close()
    return response, body


def test_server_sends_cors_and_byte_ranges_of_a_chunk(served):
    port, output = served
    chunk = output / "0" / "1" / "0" / "1"
    data = chunk.read_bytes()
    assert len(data) > 12
    whole, body = _get(port, "/output/pred.ome.zarr/0/1/0/1")
    assert whole.status == 200 and body == data
    assert whole.getheader("Access-Control-Allow-Origin") == "*"
    assert whole.getheader("Accept-Ranges") == "bytes"
    part, body = _get(port, "/output/pred.ome.zarr/0/1/0/1", {"Range": "bytes=2-9"})
    assert part.status == 206 and body == data[2:10]
    assert part.getheader("Content-Range") == f"bytes 2-9/{len(data)}"
    assert part.getheader("Access-Control-Allow-Origin") == "*"
    tail, body = _get(port, "/output/pred.ome.zarr/0/1/0/1", {"Range": "bytes=-5"})
    assert tail.status == 206 and body == data[-5:]
    beyond, _ = _get(port, "/output/pred.ome.zarr/0/1/0/1", {"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416
    meta, body = _get(port, "/output/pred.ome.zarr/.zattrs")
    assert meta.status == 200 and "multiscales" in json.loads(body)
    # nothing outside the store, and a missing chunk is a 404 (Neuroglancer reads it as the fill value)
    assert _get(port, "/output/pred.ome.zarr/../../etc/passwd")[0].status == 404
    assert _get(port, "/output/pred.ome.zarr/0/9/9/9")[0].status == 404
    client, body = _get(port, f"/v/{TOKEN}/")
    assert client.status == 200 and body == b"<html></html>"
    events, _ = _get(port, f"/events/{TOKEN}?c=1&gc=0")
    assert events.status == 200 and events.getheader("Content-Type") == "text/event-stream"


def test_link_names_the_layers_with_their_sources_and_the_ngff_scale(tmp_path):
    output = _ngff04_output(tmp_path / "pred.ome.zarr")
    volume = np.random.default_rng(1).integers(0, 60000, (16, 24, 20), dtype=np.uint16)
    source = write_hoa_omezarr04(tmp_path / "scan.ome.zarr", [volume, mean2(volume)], 25.0)
    link = viewer_link(viewer_state(read_image(output), read_image(source), 8123), 8123)
    prefix, _, fragment = link.partition("#!")
    assert prefix == f"http://127.0.0.1:8123/v/{TOKEN}/"
    state = json.loads(unquote(fragment))
    layers = {layer["name"]: layer for layer in state["layers"]}
    assert list(layers) == ["source", "probabilities", "vessels"]
    assert layers["source"] == {**layers["source"], "type": "image",
                                "source": "zarr2://http://127.0.0.1:8123/source/scan.ome.zarr"}
    assert layers["probabilities"]["type"] == "image"
    assert layers["probabilities"]["source"] == "zarr2://http://127.0.0.1:8123/output/pred.ome.zarr"
    assert layers["vessels"]["type"] == "segmentation" and layers["vessels"]["segments"] == ["1"]
    assert layers["vessels"]["source"] == "zarr2://http://127.0.0.1:8123/output/pred.ome.zarr/labels/vessels"
    assert layers["vessels"]["segmentColors"] == {"1": "#ff0000"}
    assert list(state["dimensions"]) == ["x", "y", "z"]
    for name in "xyz":
        scale, unit = state["dimensions"][name]
        assert unit == "m" and scale == pytest.approx(50e-6)
    # centred on the output: translation / scale + shape / 2, per axis (x, y, z)
    assert state["position"] == pytest.approx([12.5 / 50 + 5, 12.5 / 50 + 6, 12.5 / 50 + 4])


def test_ngff05_is_zarr3_and_no_labels_means_two_layers(tmp_path):
    volume = np.random.default_rng(2).integers(0, 255, (8, 8, 8), dtype=np.uint8)
    output = write_omezarr05(tmp_path / "out.ome.zarr", [volume], 500.0, dtype="uint8")
    info = read_image(output)
    state = viewer_state(info, None, 9000)
    assert [layer["name"] for layer in state["layers"]] == ["probabilities"]
    assert state["layers"][0]["source"].startswith("zarr3://http://127.0.0.1:9000/output/out.ome.zarr")
    assert state["dimensions"]["x"] == [pytest.approx(500e-9), "m"]


def test_refusals_are_one_line(tmp_path, monkeypatch):
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    plain.create_array("a", shape=(2,), dtype="uint8")
    with pytest.raises(UserError, match="plain.zarr: not an NGFF OME-Zarr image"):
        read_image(tmp_path / "plain.zarr")
    with pytest.raises(UserError, match="missing.ome.zarr: not found"):
        read_image(tmp_path / "missing.ome.zarr")
    monkeypatch.setitem(sys.modules, "neuroglancer", None)       # the package not installed (find_spec: None)
    with pytest.raises(UserError, match=r"pip install -e '\.\[view\]'"):
        client_folder()


def test_an_n5_source_is_an_n5_layer_served_with_cors_and_placed_under_the_output(tmp_path):
    """HOA's N5 (written by tensorstore in the atlas's layout) as ``--source``: an ``n5://`` layer on the same
    server, whose root and level attributes and blocks are served with CORS, at the N5's voxel size, and moved so
    that the two level-0 voxels an output voxel of level 1 was predicted from cover that output voxel."""
    from urllib.parse import urlsplit

    from helpers.hoa import write_hoa_n5
    volume = np.random.default_rng(3).integers(0, 60000, (16, 24, 20), dtype=np.uint16)
    source = write_hoa_n5(tmp_path / "scan_bm05", [volume, mean2(volume)], 25.0, block=(8, 8, 8))
    # the output predicted from level 1: 50 µm, voxel j's centre where level 0's voxels 2j and 2j+1 meet
    output = _ngff04_output(tmp_path / "pred.ome.zarr", shape=(8, 12, 10), spacing=50.0, translation=12.5)
    client = tmp_path / "client"
    client.mkdir()
    (client / "index.html").write_text("<html></html>")
    server = make_server({"output": output, "source": source}, client, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        state = viewer_state(read_image(output), read_image(source), port)
        layers = {layer["name"]: layer for layer in state["layers"]}
        assert list(layers) == ["source", "probabilities", "vessels"]
        layer = layers["source"]
        assert layer["type"] == "image"
        url = layer["source"]["url"]
        assert url == f"n5://http://127.0.0.1:{port}/source/scan_bm05"
        served = urlsplit(url.removeprefix("n5://"))
        assert (served.hostname, served.port) == ("127.0.0.1", port)
        for name in ("attributes.json", "s0/attributes.json", "s1/attributes.json", "s0/0/0/0"):
            response, body = _get(port, f"{served.path}/{name}")
            assert response.status == 200, name
            assert response.getheader("Access-Control-Allow-Origin") == "*", name
            assert body == (source / name).read_bytes(), name
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
    transform = layer["source"]["transform"]
    root = json.loads((source / "attributes.json").read_text())
    assert list(transform["outputDimensions"]) == root["axes"]
    for name, resolution in zip(root["axes"], root["resolution"]):
        assert transform["outputDimensions"][name] == [pytest.approx(resolution * 1e-6), "m"]
    # Neuroglancer draws N5 voxel i over [i, i + 1) voxels, moved by the matrix's last column; an NGFF voxel j over
    # translation + (j -/+ 1/2) * scale. Output voxel 0 must cover N5 level-0 voxels 0 and 1 exactly (in µm).
    ngff = read_image(output)
    for row, name in enumerate(root["axes"]):
        shift = transform["matrix"][row][3]
        assert transform["matrix"][row][:3] == [1.0 if column == row else 0.0 for column in range(3)]
        i = ngff["axes"].index(name)
        output_voxel = (ngff["translation"][i] - ngff["scale"][i] / 2, ngff["translation"][i] + ngff["scale"][i] / 2)
        n5_voxels = ((0 + shift) * 25.0, (2 + shift) * 25.0)
        assert n5_voxels == pytest.approx(output_voxel)
