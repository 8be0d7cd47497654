"""Input faults of issue 35 (items 2, 3, 4, 7, 8, 17, 18) and 34.4: no silent wrong read, one line naming the
file for every fault, found in the shared readers (pyramid / OME-Zarr / N5 / JPEG 2000 / VolumeSource).

Stores are written by tensorstore and zarr (tests/helpers/hoa.py), slices by imagecodecs and tifffile; broken
variants are made by editing their files, never by this package's code."""
import json
import os

import numpy as np
import pytest
import tifffile
from helpers.hoa import mean2, write_hoa_n5, write_hoa_omezarr04

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.input_spec import open_volume, parse_input
from nnunet_vasculature.io.sennet_inputs import kaggle_kidney


@pytest.fixture
def volume():
    return np.random.default_rng(11).integers(1, 60000, (40, 36, 20), dtype=np.uint16)


def _edit(file, change):
    attrs = json.loads(file.read_text())
    change(attrs)
    file.write_text(json.dumps(attrs))


def _one_line(error, *names):
    text = str(error.value)
    assert "\n" not in text, text
    for name in names:
        assert str(name) in text, text


def _n5(tmp_path, volume, name="k_n5"):
    return write_hoa_n5(tmp_path / name, [volume, mean2(volume)], 25.0, block=(16, 16, 16))


def _ome(tmp_path, volume, name="k.ome.zarr"):
    return write_hoa_omezarr04(tmp_path / name, [volume, mean2(volume)], 25.0, chunk=16)


# 35.2: an OME-Zarr without coordinateTransformations
def test_omezarr_without_scale_is_refused_or_takes_spacing(tmp_path, volume):
    one = write_hoa_omezarr04(tmp_path / "one.ome.zarr", [volume], 25.0, chunk=16)
    _edit(one / ".zattrs", lambda a: a["multiscales"][0]["datasets"][0].pop("coordinateTransformations"))
    with pytest.raises(UserError, match=r"level '0' has no scale .*pass --spacing UM") as e:
        open_volume(one, log=None)                   # was read as 1 µm voxels without a word
    _one_line(e, one)
    two = _ome(tmp_path, volume)
    _edit(two / ".zattrs", lambda a: [d.pop("coordinateTransformations") for d in a["multiscales"][0]["datasets"]])
    v = open_volume(two, "auto", 50.0, spacing_um=25.0, log=None)
    assert v.level == 1 and v.spacing == (50.0, 50.0, 50.0) and v.spacing_source == "--spacing"
    np.testing.assert_array_equal(v.read(0, 20), mean2(volume))


# 35.3: a JPEG 2000 folder with a slice missing, or one slice of another data type
def test_jp2_gap_and_mixed_dtype_are_refused(tmp_path, volume):
    import imagecodecs
    folder = tmp_path / "organ_25.0um_jp2"
    folder.mkdir()
    for z in [*range(4), *range(5, 10)]:
        (folder / f"slice_{z:04d}.jp2").write_bytes(imagecodecs.jpeg2k_encode(volume[z], level=0))
    with pytest.raises(UserError, match=r"missing slice 4 \(slices 0\.\.9, 1 missing\)") as e:
        open_volume(folder, log=None)                # was predicted as 9 contiguous planes
    _one_line(e, folder)
    eight = (volume[4] // 256).astype(np.uint8)
    (folder / "slice_0004.jp2").write_bytes(imagecodecs.jpeg2k_encode(eight, level=0))
    v = open_volume(folder, log=None)
    with pytest.raises(UserError, match="slice is uint8, the first one uint16") as e:
        v.read(0, 10)                                # was cast silently (a ~256x darker plane)
    _one_line(e, folder / "slice_0004.jp2")


# 35.4 and 35.17: non-finite or non-numeric numbers in metadata
@pytest.mark.parametrize("kind, change, message", [
    ("zarr", lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(
        translation=[float("nan")] * 3), "translation .* holds nan"),
    ("zarr", lambda a: a["multiscales"][0]["datasets"][1]["coordinateTransformations"][1].update(
        scale=[float("inf")] * 3), "scale .* holds inf"),
    ("zarr", lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][1].update(
        scale=["a", "b", "c"]), "scale .* holds 'a'"),
    ("zarr", lambda a: a["multiscales"][0]["datasets"][1].update(path="../other/1"), "'../other/1' is not a level"),
    ("n5", lambda a: a.update(resolution=["a", "b", "c"]), "resolution .* holds 'a'"),
    ("n5", lambda a: a.update(downsamplingFactors=[[1, 1, 1], [2, "two", 2]]),
     r"downsamplingFactors\[1\] .* holds .two."),
])
def test_metadata_numbers_must_be_finite(tmp_path, volume, kind, change, message):
    store = _ome(tmp_path, volume) if kind == "zarr" else _n5(tmp_path, volume)
    _edit(store / (".zattrs" if kind == "zarr" else "attributes.json"), change)
    with pytest.raises(UserError, match=message) as e:
        open_volume(store, "auto", 50.0, log=None)
    _one_line(e, store)


def test_truncated_level_metadata_is_one_line(tmp_path, volume):
    store = _ome(tmp_path, volume)
    (store / "1" / ".zarray").write_text((store / "1" / ".zarray").read_text()[:30])
    with pytest.raises(UserError, match="the level's metadata cannot be read") as e:
        open_volume(store, log=None)
    _one_line(e, store / "1")


# 35.7: NaN in a float32 input
def test_nan_in_the_input_is_said_to_be_the_input(tmp_path):
    images = tmp_path / "kidney_5" / "images"
    images.mkdir(parents=True)
    planes = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    planes[3, 4, 5] = np.nan
    for z, plane in enumerate(planes):
        tifffile.imwrite(images / f"{z:04d}.tif", plane)
    v = kaggle_kidney(tmp_path / "kidney_5")
    np.testing.assert_array_equal(v.read(0, 3), planes[:3])
    with pytest.raises(UserError, match=r"input plane 3 of kidney_5 holds NaN or infinity \(the input") as e:
        v.read(2, 6)
    _one_line(e, images)


# 35.8: absent chunks are the fill value and counted; a chunk that exists but cannot be read is an error
@pytest.mark.parametrize("kind", ["n5", "zarr"])
def test_absent_chunks_are_counted(tmp_path, volume, kind):
    store = _n5(tmp_path, volume) if kind == "n5" else _ome(tmp_path, volume)
    chunk = store / ("s0/0/0/1" if kind == "n5" else "0/0/0/1")      # x 0-15, y 0-15, z 16-31
    chunk.unlink()
    lines = []
    v = open_volume(store, 0, log=lines.append)
    assert (v.chunk_count, v.absent_chunks) == (2 * 3 * 3, 1)
    assert lines[1] == f"{v.name}: 1 of 18 chunks of level 0 are absent, read as the fill value 0 (zarr's rule " \
                       f"for empty chunks)"
    read = v.read(0, 40)
    assert (read[16:32, :16, :16] == 0).all() and (read[16:32, 16:, :] == volume[16:32, 16:, :]).all()


@pytest.mark.parametrize("kind", ["n5", "zarr"])
@pytest.mark.parametrize("fault", ["loop", "dangling", "folder"])
def test_unreadable_chunk_is_named(tmp_path, volume, kind, fault):
    store = _n5(tmp_path, volume) if kind == "n5" else _ome(tmp_path, volume)
    chunk = store / ("s0/0/1/0" if kind == "n5" else "0/0/1/0")
    chunk.unlink()
    if fault == "loop":
        os.symlink(chunk, chunk)
    elif fault == "dangling":
        os.symlink(tmp_path / "nowhere", chunk)
    else:
        chunk.mkdir()
    with pytest.raises(UserError, match="chunk of .*(cannot be followed|is not a file)") as e:
        open_volume(store, 0, log=None)              # was read as the fill value
    _one_line(e, chunk)


@pytest.mark.parametrize("kind", ["n5", "zarr"])
def test_corrupt_chunk_is_one_line(tmp_path, volume, kind):
    store = _n5(tmp_path, volume) if kind == "n5" else _ome(tmp_path, volume)
    chunk = store / ("s0/1/2/2" if kind == "n5" else "0/1/2/2")
    data = chunk.read_bytes()
    keep = 16 if kind == "n5" else 0                 # an N5 block's header stays valid: the data is broken
    chunk.write_bytes(data[:keep] + bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)))
    v = open_volume(store, 0, log=None)
    with pytest.raises(UserError) as e:
        v.read(0, 40)                                # was a tensorstore ValueError / blosc RuntimeError traceback
    _one_line(e, chunk)


# 35.17 and 34.4: an N5 whose attributes contradict its blocks
def test_n5_attributes_that_do_not_describe_the_blocks(tmp_path, volume):
    store = _n5(tmp_path, volume)
    _edit(store / "s0" / "attributes.json", lambda a: a.update(dataType="uint8"))
    with pytest.raises(UserError, match="cannot be decoded as declared") as e:
        open_volume(store, 0, log=None)
    _one_line(e, store / "s0" / "0" / "0" / "0")
    store = _n5(tmp_path, volume, "reversed_n5")      # dimensions listed z, y, x over blocks stored x, y, z
    for level in ("s0", "s1"):
        _edit(store / level / "attributes.json", lambda a: a.update(dimensions=a["dimensions"][::-1]))
    with pytest.raises(UserError, match="a block outside the grid .* do not describe these blocks") as e:
        open_volume(store, 0, log=None)              # was read as a transposed volume
    _one_line(e, store / "s0")


# 35.18: a valid N5 given as a relative path with ..
def test_relative_n5_path(tmp_path, volume, monkeypatch):
    _n5(tmp_path, volume)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    v = open_volume("../k_n5", 0, log=None)
    np.testing.assert_array_equal(v.read(0, 40), volume)


# 35.17: --spacing out of range
@pytest.mark.parametrize("value", ["inf", "1e-300", "1e6", "nan", "-5", "kidney_6=0"])
def test_spacing_out_of_range(tmp_path, volume, value):
    store = _n5(tmp_path, volume)
    with pytest.raises(UserError, match=r"between 0\.1 and 10000 µm") as e:
        parse_input(str(store), spacing=[value])
    _one_line(e, value)


# 34.4: the N5 attribute `axes` names the storage order; any order of x, y, z is read as declared
@pytest.mark.parametrize("axes", [("z", "y", "x"), ("y", "z", "x"), ("x", "z", "y")])
def test_n5_axes_in_any_order_read_alike(tmp_path, volume, axes):
    levels = [volume, mean2(volume)]
    hoa = write_hoa_n5(tmp_path / "xyz_n5", levels, (10.0, 20.0, 30.0), block=(16, 16, 16))
    other = write_hoa_n5(tmp_path / "other_n5", levels, (10.0, 20.0, 30.0), block=(16, 16, 16), axes=axes)
    assert json.loads((other / "s0" / "attributes.json").read_text())["dimensions"] == \
        [{"x": 20, "y": 36, "z": 40}[a] for a in axes]            # the blocks really are stored otherwise
    for level in (0, 1):
        ours, theirs = open_volume(other, level, log=None), open_volume(hoa, level, log=None)
        assert ours.shape == theirs.shape == levels[level].shape
        assert ours.spacing == theirs.spacing == tuple(s * 2 ** level for s in (30.0, 20.0, 10.0))
        np.testing.assert_array_equal(ours.read(0, ours.shape[0]), levels[level])


@pytest.mark.parametrize("axes", ["xyz", "zyx", ["x", "y"], ["x", "y", "z", "t"], ["x", "x", "z"],
                                  ["x", "y", "t"], [0, 1, 2], {"x": 0, "y": 1, "z": 2}, 3])
@pytest.mark.parametrize("where", ["root", "levels"])
def test_n5_axes_that_are_not_x_y_z_are_one_line(tmp_path, volume, axes, where):
    store = _n5(tmp_path, volume)
    files = [store / "attributes.json"] if where == "root" else [store / "s0" / "attributes.json",
                                                                  store / "s1" / "attributes.json"]
    for file in files:
        _edit(file, lambda a: a.update(axes=axes))
    with pytest.raises(UserError, match=r"expected x, y and z once each.*the atlas writes \[\"x\", \"y\", \"z\"\]") \
            as e:
        open_volume(store, 0, log=None)            # "xyz", a dict or a number: read, a traceback, or tensorstore's
    _one_line(e, files[0])
