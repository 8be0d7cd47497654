"""Probabilities without predict's record (issue 35 item 5): a uint8 zarr array or OME-Zarr image that predict did
not write is refused by every command that reads probabilities, in one line naming it (before: a bare store was
thresholded as probabilities, exit 0); ``--foreign_probabilities`` accepts it knowingly, with one warning line, and
reads the same values as our own writers' outputs of the same array (the flag changes acceptance, not values)."""
import json

import numpy as np
import tifffile
import zarr
from scipy import ndimage as ndi

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.ngff import NgffWriter
from nnunet_vasculature.io.store import KidneyWriter

SOURCE = {"tool": "predict", "model": {"folder": "/models/m", "folds": ["0"]}}
SHAPE = (6, 16, 14)
IDS = [f"kidney_5_{z:04d}" for z in range(SHAPE[0])]
FLAG = "--foreign_probabilities"


def _probabilities():
    """uint8 levels with blobs and speckle, so that thresholds and component removal matter."""
    rng = np.random.default_rng(5)
    smooth = ndi.gaussian_filter(rng.random(SHAPE), 1.5)
    prob = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 0.85 + rng.random(SHAPE) * 0.15
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


PROB = _probabilities()


def _bare_store(path):
    """A store laid out as predict's, written by zarr directly with no run record: probabilities from elsewhere."""
    array = zarr.open_group(str(path), mode="w").create_array("kidney_5", shape=SHAPE, chunks=(1, *SHAPE[1:]),
                                                              dtype="uint8")
    array[:] = PROB
    return path


def _own_store(path):
    writer = KidneyWriter(zarr.open_group(str(path), mode="w"), "kidney_5", SHAPE, (1.0, 1.0, 1.0), IDS, SOURCE)
    writer(0, PROB)
    writer.close()
    return path


def _bare_image(path):
    """An NGFF 0.4 image of the same levels, written by zarr directly (no nnunet_vasculature record)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=SHAPE, chunks=(2, *SHAPE[1:]), dtype="uint8")[:] = PROB
    group.attrs["multiscales"] = [{"version": "0.4", "name": "kidney_5", "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]}]
    return path


def _own_image(path):
    writer = NgffWriter(path, "kidney_5", SHAPE, (1.0, 1.0, 1.0), IDS, SOURCE)
    writer(0, PROB)
    writer.close()
    return path


def _pp(tmp_path):
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 150, "min_component_voxels": 4}')
    return pp


def _labels(tmp_path):
    folder = tmp_path / "kidney_5" / "labels"
    folder.mkdir(parents=True)
    truth = ndi.gaussian_filter(PROB.astype(float), 1.0) > 140
    for z, plane in enumerate(truth):
        tifffile.imwrite(folder / f"{z:04d}.tif", plane.astype(np.uint8) * 255)
    return folder


def _run(capsys, args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err.splitlines()
    return rc, [line for line in err if line.startswith(("error:", "warning:"))]


def _store_message(array):
    return (f"error: {array}: a uint8 zarr array without predict's record of probabilities (written by other "
            f"software?): its values are not known to be probabilities; give predict's output, or pass "
            f"--foreign_probabilities if they are (uint8 0..255 read as 0..1)")


def _accepted(path, what):
    return (f"warning: {path}: {what} accepted without predict's record of probabilities (--foreign_probabilities): "
            f"uint8 0..255 read as 0..1")


def test_submit_and_tune_refuse_a_bare_uint8_store_in_one_line(tmp_path, capsys):
    """Before: `submit -i bare.zarr` thresholded the array as probabilities and wrote rows (exit 0), `tune` tuned
    on it; now both refuse it, the store or its array given, in one line naming the array, writing nothing."""
    store = _bare_store(tmp_path / "bare.zarr")
    labels = _labels(tmp_path)
    for given in (store, store / "kidney_5"):
        rc, lines = _run(capsys, ["submit", "-i", given, "-pp", _pp(tmp_path), "-o", tmp_path / "s.csv"])
        assert rc == 2 and lines == [_store_message(store / "kidney_5")], lines
        rc, lines = _run(capsys, ["tune", "-i", given, "--labels", labels, "-o", tmp_path / "tuned.json"])
        assert rc == 2 and lines == [_store_message(store / "kidney_5")], lines
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "tuned.json").exists()


def test_apply_and_score_refuse_it_too(tmp_path, capsys):
    """The check is in the shared opener: `apply` and `score --pred ... -pp` refuse the same array alike."""
    store = _bare_store(tmp_path / "bare.zarr")
    labels = _labels(tmp_path)
    for args in (["apply", "-i", store, "-pp", _pp(tmp_path), "-o", tmp_path / "masks"],
                 ["score", "--labels", labels, "--pred", store / "kidney_5", "-pp", _pp(tmp_path)]):
        rc, lines = _run(capsys, args)
        assert rc == 2 and lines == [_store_message(store / "kidney_5")], (args, lines)
    assert not (tmp_path / "masks").exists()


def test_the_flag_reads_a_bare_store_as_our_writer_s_store_of_the_same_array(tmp_path, capsys):
    """With --foreign_probabilities the bare store is accepted with one warning line, and submit, tune, apply and
    score give exactly what they give on a store our writer made from the same array (which needs no flag)."""
    bare, own = _bare_store(tmp_path / "bare.zarr"), _own_store(tmp_path / "own.zarr")
    labels, pp = _labels(tmp_path), _pp(tmp_path)
    warning = [_accepted(bare / "kidney_5", "uint8 zarr array")]
    outputs = {}
    for name, store, extra, expected in (("bare", bare, [FLAG], warning), ("own", own, [], [])):
        rc, lines = _run(capsys, ["submit", "-i", store, "-pp", pp, "-o", tmp_path / f"{name}.csv", *extra])
        assert rc == 0 and lines == expected, lines
        rc, lines = _run(capsys, ["tune", "-i", store, "--labels", labels, "-o", tmp_path / f"{name}.json",
                                  "--cc_sizes", "2", "8", *extra])
        assert rc == 0 and lines == expected, lines
        rc, lines = _run(capsys, ["apply", "-i", store, "-pp", pp, "-o", tmp_path / f"{name}_masks", *extra])
        assert rc == 0 and lines == expected, lines
        capsys.readouterr()
        assert main([str(a) for a in ["score", "--labels", labels, "--pred", store / "kidney_5", "-pp", pp,
                                      *extra]]) == 0
        outputs[name] = {"csv": (tmp_path / f"{name}.csv").read_text(),
                         "tuned": json.loads((tmp_path / f"{name}.json").read_text()),
                         "masks": np.stack([tifffile.imread(tmp_path / f"{name}_masks" / f"{z:04d}.tif")
                                            for z in range(SHAPE[0])]),
                         "score": capsys.readouterr().out}
    rows = [line.split(",") for line in outputs["own"]["csv"].splitlines()[1:]]
    assert [r[0] for r in rows] == IDS and any(r[1] != "1 0" for r in rows)      # a submission with vessels
    for key in ("csv", "tuned", "score"):
        assert outputs["bare"][key] == outputs["own"][key], key
    np.testing.assert_array_equal(outputs["bare"]["masks"], outputs["own"]["masks"])


def test_an_ome_zarr_image_without_record_is_refused_and_accepted_with_the_flag(tmp_path, capsys):
    """A uint8 OME-Zarr image predict did not write: refused in one line that names the flag; with the flag read
    as probabilities, one warning line, the same submission as our NgffWriter's image of the same array."""
    image, own = _bare_image(tmp_path / "kidney_5.ome.zarr"), _own_image(tmp_path / "own" / "kidney_5.ome.zarr")
    pp = _pp(tmp_path)
    rc, lines = _run(capsys, ["submit", "-i", image, "-pp", pp, "-o", tmp_path / "bare.csv"])
    assert rc == 2 and lines == [
        f"error: {image}: an OME-Zarr image without predict's record of probabilities (a scan or a label image?): "
        f"its values are not probabilities; give predict's output, or pass --foreign_probabilities if they are "
        f"(uint8 0..255 read as 0..1)"], lines
    assert not (tmp_path / "bare.csv").exists()
    rc, lines = _run(capsys, ["submit", "-i", image, "-pp", pp, "-o", tmp_path / "bare.csv", FLAG])
    assert rc == 0 and lines == [_accepted(image, "OME-Zarr image")], lines
    rc, lines = _run(capsys, ["submit", "-i", own, "-pp", pp, "-o", tmp_path / "own.csv"])
    assert rc == 0 and lines == [], lines
    assert (tmp_path / "bare.csv").read_text() == (tmp_path / "own.csv").read_text()


def test_the_flag_does_not_accept_a_level_of_our_own_image(tmp_path, capsys):
    """The flag accepts inputs without a record; a level of predict's image still asks for the image itself."""
    own = _own_image(tmp_path / "kidney_5.ome.zarr")
    rc, lines = _run(capsys, ["submit", "-i", own / "0", "-pp", _pp(tmp_path), "-o", tmp_path / "s.csv", FLAG])
    assert rc == 2 and lines == [f"error: {own / '0'}: a level of the probability image {own}; give the image "
                                 f"itself"], lines


def test_a_foreign_image_stored_in_another_axis_order_is_refused_with_the_flag(tmp_path, capsys):
    """The flag reads level 0 as stored: an image stored (x, y, z) would be read transposed, so it is refused in one
    line naming the image and its axes."""
    image = _bare_image(tmp_path / "kidney_5.ome.zarr")
    group = zarr.open_group(str(image), mode="a")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["axes"] = multiscales[0]["axes"][::-1]
    group.attrs["multiscales"] = multiscales
    rc, lines = _run(capsys, ["submit", "-i", image, "-pp", _pp(tmp_path), "-o", tmp_path / "s.csv", FLAG])
    assert rc == 2 and lines == [f"error: {image}: axes ['x', 'y', 'z']; an image read as probabilities must be "
                                 f"stored (z, y, x)"], lines
    assert not (tmp_path / "s.csv").exists()


def test_pseudo_label_refuses_a_bare_store_and_takes_the_flag(tmp_path, capsys):
    """pseudo-label reads probabilities through the same opener: refused without the flag (its message names the
    flag, so the command must have it), the same labels as from our own writer's store with it."""
    labels = _labels(tmp_path)
    bare, own = _bare_store(tmp_path / "bare.zarr"), _own_store(tmp_path / "own.zarr")
    args = ["--labels", labels, "--threshold", "0.6"]
    rc, lines = _run(capsys, ["pseudo-label", "-i", bare / "kidney_5", *args, "-o", tmp_path / "bare_labels"])
    assert rc == 2 and lines == [_store_message(bare / "kidney_5")], lines
    rc, lines = _run(capsys, ["pseudo-label", "-i", bare / "kidney_5", *args, "-o", tmp_path / "bare_labels", FLAG])
    assert rc == 0 and lines == [_accepted(bare / "kidney_5", "uint8 zarr array")], lines
    rc, _ = _run(capsys, ["pseudo-label", "-i", own / "kidney_5", *args, "-o", tmp_path / "own_labels"])
    assert rc == 0
    made = [tifffile.imread(f) for f in sorted((tmp_path / "bare_labels").glob("*.tif"))]
    expected = [tifffile.imread(f) for f in sorted((tmp_path / "own_labels").glob("*.tif"))]
    assert len(made) == SHAPE[0] and all(np.array_equal(a, b) for a, b in zip(made, expected))
    assert sum(int((m == 255).sum()) for m in made) > sum(int((tifffile.imread(f) > 0).sum())
                                                          for f in sorted(labels.glob("*.tif")))   # labels added


def test_a_record_with_another_encoding_is_not_predicts(tmp_path, capsys):
    """A store array with a `source` record but another `encoding` (not round(255 x p)) is not taken as predict's
    probabilities: refused like a bare array; the same store with predict's encoding is read."""
    store = _own_store(tmp_path / "own.zarr")
    args = ["-pp", _pp(tmp_path), "-o", tmp_path / "s.csv"]
    assert _run(capsys, ["submit", "-i", store, *args])[0] == 0
    zarr.open_group(str(store), mode="r+")["kidney_5"].attrs["encoding"] = "uint8 = round(255 * P(glomerulus))"
    rc, lines = _run(capsys, ["submit", "-i", store, *args[:2], "-o", tmp_path / "t.csv"])
    assert rc == 2 and lines == [_store_message(store / "kidney_5")], lines
    assert not (tmp_path / "t.csv").exists()
