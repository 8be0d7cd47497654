"""The NGFF OME-Zarr output (issue 24): validated by ome-zarr-models, read back by ome-zarr's reader,
overlaying the source level, chunk-aligned resume, and the ``labels/`` image of a binary mask."""
import numpy as np
import pytest
import zarr
from helpers.hoa import mean2, write_hoa_omezarr04
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from skimage.measure import block_reduce

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.input_spec import open_volume
from nnunet_vasculature.io.ngff import ATTRS_KEY, NgffLabelsWriter, NgffWriter

SOURCE = {"tool": "predict", "model": {"folder": "/models/m", "folds": ["0"]}}


def _models(version):
    if version == "0.4":
        from ome_zarr_models.v04 import Image, ImageLabel, Labels
    else:
        from ome_zarr_models.v05 import Image, ImageLabel, Labels
    return Image, ImageLabel, Labels


def _write(out, prob, version="0.4", pieces=5, **kw):
    writer = NgffWriter(out, "vol", prob.shape, (50.0, 50.0, 50.0), None, SOURCE, version=version,
                        chunk_depth=16, chunk_yx=32, **kw)
    for z in range(writer.start, prob.shape[0], pieces):
        writer(z, prob[z:z + pieces])
    writer.close()
    return writer


def _nodes(path):
    return list(Reader(parse_url(str(path)))())


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_image_validates_and_reads_back(tmp_path, version):
    prob = np.random.default_rng(0).random((64, 48, 40)).astype(np.float32)
    out = tmp_path / "out.ome.zarr"
    _write(out, prob, version, levels=3, translation=(12.5, 12.5, 12.5),
           provenance={"dataset": "LADAF-X", "doi": "10.15151/x", "level": 1})
    Image, _, _ = _models(version)
    Image.from_zarr(zarr.open_group(str(out), mode="r"))          # independent NGFF validation
    node = next(n for n in _nodes(out) if any(isinstance(s, Multiscales) for s in n.specs))
    levels = [np.asarray(d) for d in node.data]
    expected0 = np.rint(prob * 255).astype(np.uint8)
    np.testing.assert_array_equal(levels[0], expected0)
    np.testing.assert_array_equal(levels[1], np.rint(block_reduce(expected0.astype(float), (2, 2, 2), np.mean)))
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "micrometer" for a in node.metadata["axes"])
    transforms = node.metadata["coordinateTransformations"]
    assert transforms[1][0]["scale"] == [100.0] * 3
    assert transforms[1][1]["translation"] == [37.5] * 3     # level-1 voxel 0 = mean of level-0 voxels 0, 1
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].chunks == (16, 32, 32)
    meta = group.attrs[ATTRS_KEY]
    assert meta["complete"] and meta["provenance"]["doi"] == "10.15151/x" and meta["source"] == SOURCE


def test_output_overlays_the_source_level(tmp_path):
    """Level 0 of the output sits where the HOA source's level 1 voxels are (HOA: translation 0.5 voxel
    applied before the scale), and the output's level 1 where the mean of its voxels is."""
    volume = np.random.default_rng(1).integers(0, 60000, (32, 24, 16), dtype=np.uint16)
    source = write_hoa_omezarr04(tmp_path / "src.ome.zarr", [volume, mean2(volume)], 25.0)
    src = open_volume(source, 1, log=None)
    out = tmp_path / "pred.ome.zarr"
    _write(out, np.zeros(src.shape, np.float32), levels=2, translation=src.translation)
    node = next(n for n in _nodes(out) if any(isinstance(s, Multiscales) for s in n.specs))
    (scale0, shift0), (scale1, shift1) = [(t[0]["scale"], t[1]["translation"])
                                          for t in node.metadata["coordinateTransformations"][:2]]
    index = np.array([3, 5, 7])
    hoa_level1 = (index + 0.5) * 50.0              # HOA's listed order: translate by 0.5, then scale
    np.testing.assert_allclose(index * scale0 + shift0, hoa_level1)
    np.testing.assert_allclose(index * scale1 + shift1, ((2 * index + 0.5) * 50.0 + (2 * index + 1.5) * 50.0) / 2)


def test_resume_is_chunk_aligned(tmp_path):
    prob = np.random.default_rng(2).random((70, 20, 20)).astype(np.float32)
    out = tmp_path / "out.ome.zarr"
    writer = NgffWriter(out, "vol", prob.shape, (50.0,) * 3, None, SOURCE, chunk_depth=16)
    for z in range(0, 40, 5):                       # killed after 40 planes: only whole chunk rows are kept
        writer(z, prob[z:z + 5])
    assert zarr.open_group(str(out), mode="r")["0"].attrs["planes_done"] == 32
    with pytest.raises(UserError, match="other settings"):
        NgffWriter(out, "vol", prob.shape, (50.0,) * 3, None, {"tool": "predict", "model": {}}, chunk_depth=16)
    resumed = NgffWriter(out, "vol", prob.shape, (50.0,) * 3, None, SOURCE, chunk_depth=16)
    assert resumed.start == 32
    for z in range(32, 70, 9):
        resumed(z, prob[z:z + 9])
    resumed.close()
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], np.rint(prob * 255))
    with pytest.raises(UserError, match="already written"):
        NgffWriter(out, "vol", prob.shape, (50.0,) * 3, None, SOURCE, chunk_depth=16)
    with pytest.raises(RuntimeError, match="out of order"):
        NgffWriter(tmp_path / "b.ome.zarr", "vol", prob.shape, (50.0,) * 3, None, SOURCE)(3, prob[3:4])


def test_refuses_a_foreign_store(tmp_path):
    group = zarr.open_group(str(tmp_path / "x.zarr"), mode="w", zarr_format=2)
    group.create_array("kidney_5", shape=(4, 4, 4), dtype="uint8")
    with pytest.raises(UserError, match="another zarr group"):
        NgffWriter(tmp_path / "x.zarr", "vol", (4, 4, 4), (1.0,) * 3, None, SOURCE)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_group(tmp_path, version):
    prob = np.random.default_rng(3).random((40, 30, 22)).astype(np.float32)
    out = tmp_path / "out.ome.zarr"
    _write(out, prob, version, levels=2, translation=(5.0, 6.0, 7.0))
    mask = prob > 0.7
    labels = NgffLabelsWriter(out, {"tool": "apply", "threshold": 0.7})
    for z in range(0, 40, 7):
        labels(z, mask[z:z + 7])
    labels.close()
    _, ImageLabel, Labels = _models(version)
    ImageLabel.from_zarr(zarr.open_group(str(out / "labels" / "vessels"), mode="r"))
    Labels.from_zarr(zarr.open_group(str(out / "labels"), mode="r"))
    node = next(n for n in _nodes(out / "labels" / "vessels") if any(isinstance(s, Label) for s in n.specs))
    np.testing.assert_array_equal(np.asarray(node.data[0]), mask)
    np.testing.assert_array_equal(np.asarray(node.data[1]), block_reduce(mask, (2, 2, 2), np.max))
    image = next(n for n in _nodes(out) if any(isinstance(s, Multiscales) for s in n.specs))
    assert node.metadata["coordinateTransformations"] == image.metadata["coordinateTransformations"]
    with pytest.raises(UserError, match="other than 0 and 1"):
        NgffLabelsWriter(out, {"tool": "apply"}, overwrite=True, name="bad")(0, (prob[:2] * 3).astype(np.uint8))


def test_labels_need_a_complete_image(tmp_path):
    writer = NgffWriter(tmp_path / "o.ome.zarr", "vol", (20, 8, 8), (1.0,) * 3, None, SOURCE)
    writer(0, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(UserError, match="incomplete"):
        NgffLabelsWriter(tmp_path / "o.ome.zarr", {"tool": "apply"})


def _submit(capsys, image, tmp_path):
    from nnunet_vasculature.cli import main
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    capsys.readouterr()
    rc = main(["submit", "-i", str(image), "-pp", str(pp), "-o", str(tmp_path / "s.csv")])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_a_missing_chunk_of_the_image_is_refused(tmp_path, capsys):
    """Every chunk is stored, all-zero ones too, so a deleted level-0 chunk is refused in one line naming the
    store and the chunk (issue 35 item 1; before: `submit` exited 0, the chunk read as zeros)."""
    prob = np.zeros((40, 40, 40), np.float32)
    prob[20:, 5:30, 5:30] = 0.9                      # chunk rows 0 of level 0 all zero
    out = tmp_path / "kidney_5.ome.zarr"
    writer = NgffWriter(out, "kidney_5", prob.shape, (50.0,) * 3, [f"kidney_5_{z:04d}" for z in range(40)], SOURCE,
                        chunk_depth=16, chunk_yx=32, levels=2)
    writer(0, prob)
    writer.close()
    level0 = zarr.open_group(str(out), mode="r")["0"]
    assert level0.nchunks_initialized == level0.nchunks == 12
    assert _submit(capsys, out, tmp_path)[0] == 0
    (out / "0" / "1" / "0" / "0").unlink()           # a chunk with vessels in it
    rc, err = _submit(capsys, out, tmp_path)
    assert rc == 2 and err == [f"error: {out}: 1 of 12 chunks are missing (chunk 0/1/0/0 deleted or lost; they would "
                               f"read as zeros): predict it again"], err


def test_submit_refuses_an_ome_zarr_image_predict_did_not_write(tmp_path, capsys):
    """A uint8 OME-Zarr image (a scan, made with zarr directly) is not probabilities: refused in one line, also
    given as its level (issue 35 item 5; before: thresholded as probabilities, exit 0)."""
    image = tmp_path / "kidney_5.ome.zarr"
    group = zarr.open_group(str(image), mode="w", zarr_format=2)
    group.create_array("0", shape=(4, 6, 7), chunks=(2, 6, 7), dtype="uint8")[:] = 200
    group.attrs["multiscales"] = [{"version": "0.4", "name": "kidney_5", "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]}]
    message = (f"error: {image}: an OME-Zarr image without predict's record of probabilities (a scan or a label "
               f"image?): its values are not probabilities; give predict's output, or pass --foreign_probabilities "
               f"if they are (uint8 0..255 read as 0..1)")
    for given in (image, image / "0"):
        rc, err = _submit(capsys, given, tmp_path)
        assert rc == 2 and err == [message], err
        assert not (tmp_path / "s.csv").exists()
