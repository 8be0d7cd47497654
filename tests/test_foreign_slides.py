"""HuBMAP Kidney slide probability stores without the record of ``predict hubmap-kidney`` (issue 35 item 5): a
``<id>.zarr`` (H, W) uint8 array written by other software is refused by every command that reads slide stores
(``tune``, ``submit``, ``convert --pseudo``), in one line naming the store (before: thresholded as probabilities,
exit 0); ``--foreign_probabilities`` accepts it knowingly, with one warning line, and gives what a store holding
predict's record and the same array gives (the flag changes acceptance, not values)."""
import json

import numpy as np
import zarr
from scipy import ndimage as ndi

from nnunet_vasculature.cli import main

SOURCE = {"tool": "predict hubmap-kidney", "model": {"folder": "/models/m", "folds": ["0"]}}
SHAPE = (40, 60)
FLAG = "--foreign_probabilities"


def _probabilities(shape, seed=6):
    """uint8 levels with blobs and speckle, so that the threshold and component removal matter."""
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.random(shape), 2.0)
    prob = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 0.85 + rng.random(shape) * 0.15
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


PROB = _probabilities(SHAPE)


def _bare_slide(path, prob=PROB):
    """A slide store laid out as predict's, written by zarr directly with no run record: from other software."""
    array = zarr.create_array(str(path), shape=prob.shape, chunks=(prob.shape[0], 16), dtype="uint8")
    array[:] = prob
    return path


def _own_slide(path, prob=PROB):
    """The same array with the attributes ``predict hubmap-kidney`` records (written with zarr, not our writer)."""
    _bare_slide(path, prob)
    zarr.open_array(str(path), mode="a").attrs.update({
        "slide": path.stem, "encoding": "uint8 = round(255 * P(glomerulus))", "downscale": 4, "source": SOURCE,
        "every_chunk_stored": True})
    return path


def _truth_csv(tmp_path, slide_id="s1"):
    truth = ndi.gaussian_filter(PROB.astype(float), 1.0) > 140
    runs = np.flatnonzero(np.diff(np.concatenate([[0], truth.T.ravel().astype(np.int8), [0]])))
    starts, ends = runs[0::2] + 1, runs[1::2] + 1
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,encoding\n" + f"{slide_id}," + " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))
                        + "\n")
    return csv_path


def _pp(tmp_path):
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "hubmap-kidney", "threshold_u8": 150, "min_component_pixels": 6}')
    return pp


def _run(capsys, args):
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.splitlines()      # a progress bar may precede a line without a line break
    return rc, [line[line.index(word):] for line in err for word in ("error:", "warning:") if word in line]


def _refused(store):
    return (f"error: {store}: a slide probability store without the record of predict hubmap-kidney (written by "
            f"other software?): its values are not known to be probabilities; give predict hubmap-kidney's output, "
            f"or pass --foreign_probabilities if they are (uint8 0..255 read as 0..1)")


def _accepted(store):
    return (f"warning: {store}: slide probability store accepted without predict's record of probabilities "
            f"(--foreign_probabilities): uint8 0..255 read as 0..1")


def test_submit_and_tune_refuse_a_bare_slide_store_in_one_line(tmp_path, capsys):
    """Before: `submit hubmap-kidney -i bare/s1.zarr` wrote a submission (exit 0) and `tune` tuned on the array;
    now both refuse it, the store or its folder given, in one line naming the store, writing nothing."""
    store = _bare_slide(tmp_path / "bare" / "s1.zarr")
    labels = _truth_csv(tmp_path)
    for given in (store, store.parent):
        rc, lines = _run(capsys, ["submit", "hubmap-kidney", "-i", given, "-pp", _pp(tmp_path),
                                  "-o", tmp_path / "sub.csv"])
        assert rc == 2 and lines == [_refused(store)], lines
        rc, lines = _run(capsys, ["tune", "hubmap-kidney", "-i", given, "--labels", labels,
                                  "-o", tmp_path / "tuned.json"])
        assert rc == 2 and lines == [_refused(store)], lines
    assert not (tmp_path / "sub.csv").exists() and not (tmp_path / "tuned.json").exists()


def test_submit_checks_every_store_before_post_processing_any(tmp_path, capsys):
    """One bare store among recorded ones: refused before any slide is post-processed (the first store, whose chunk
    holds random bytes, is not read: reading it would be the line of an unreadable chunk instead)."""
    first, second = _own_slide(tmp_path / "in" / "a1.zarr"), _bare_slide(tmp_path / "in" / "b2.zarr")
    (first / "c" / "0" / "1").write_bytes(np.random.default_rng(1).bytes(300))
    rc, lines = _run(capsys, ["submit", "hubmap-kidney", "-i", first.parent, "-pp", _pp(tmp_path),
                              "-o", tmp_path / "sub.csv"])
    assert rc == 2 and lines == [_refused(second)], lines
    assert not (tmp_path / "sub.csv").exists()


def test_the_flag_reads_a_bare_slide_store_as_a_recorded_one(tmp_path, capsys):
    """With --foreign_probabilities the bare store is accepted with one warning line, and submit and tune write
    exactly what they write from a store holding predict's record and the same array (which needs no flag)."""
    bare, own = _bare_slide(tmp_path / "bare" / "s1.zarr"), _own_slide(tmp_path / "own" / "s1.zarr")
    labels, pp = _truth_csv(tmp_path), _pp(tmp_path)
    outputs = {}
    for name, store, extra, expected in (("bare", bare, [FLAG], [_accepted(bare)]), ("own", own, [], [])):
        rc, lines = _run(capsys, ["submit", "hubmap-kidney", "-i", store, "-pp", pp, "-o", tmp_path / f"{name}.csv",
                                  *extra])
        assert rc == 0 and lines == expected, lines
        rc, lines = _run(capsys, ["tune", "hubmap-kidney", "-i", store.parent, "--labels", labels,
                                  "-o", tmp_path / f"{name}.json", "--cc_sizes", "2", "8", "32", "128", "512", *extra])
        assert rc == 0 and lines == expected, lines
        outputs[name] = {"csv": (tmp_path / f"{name}.csv").read_text(),
                         "tuned": json.loads((tmp_path / f"{name}.json").read_text())}
    rows = outputs["own"]["csv"].splitlines()
    assert rows[0] == "id,predicted" and rows[1].startswith("s1,") and len(rows[1]) > 5     # a mask was written
    assert outputs["bare"] == outputs["own"]


def test_convert_pseudo_refuses_a_bare_store_and_takes_the_flag(tmp_path, capsys):
    """`convert hubmap-kidney --pseudo ID=STORE` reads the store through the same opener: refused without the flag
    before anything is written, the same pseudo-labels as from a recorded store of the same array with it."""
    from PIL import Image

    from nnunet_vasculature.io.slide import read_info
    from nnunet_vasculature.synthetic.hubmap_kidney import synthesize
    kaggle = synthesize(tmp_path / "kaggle", seed=2, n_train=2, n_test=1, size=160)
    test_id = sorted((kaggle / "test").glob("*.tiff"))[0].stem
    row = read_info(kaggle)[test_id]
    prob = _probabilities((row["height"], row["width"]), seed=3)
    bare = _bare_slide(tmp_path / "bare" / f"{test_id}.zarr", prob)
    own = _own_slide(tmp_path / "own" / f"{test_id}.zarr", prob)
    args = ["convert", "hubmap-kidney", kaggle, "-d", "647", "--tile", "32"]
    (tmp_path / "raw_bare").mkdir()
    rc, lines = _run(capsys, [*args, "-o", tmp_path / "raw_bare", "--pseudo", f"{test_id}={bare}"])
    assert rc == 2 and lines == [_refused(bare)], lines
    assert list((tmp_path / "raw_bare").iterdir()) == []
    rc, lines = _run(capsys, [*args, "-o", tmp_path / "raw_bare", "--pseudo", f"{test_id}={bare}", FLAG])
    assert rc == 0 and lines == [_accepted(bare)], lines
    rc, lines = _run(capsys, [*args, "-o", tmp_path / "raw_own", "--pseudo", f"{test_id}={own}"])
    assert rc == 0 and lines == [], lines
    made = {name: sorted((tmp_path / name / "Dataset647_HuBMAPKidney" / "labelsTr").glob(f"{test_id}_*.png"))
            for name in ("raw_bare", "raw_own")}
    assert made["raw_bare"] and [p.name for p in made["raw_bare"]] == [p.name for p in made["raw_own"]]
    labels = [[np.asarray(Image.open(p)) for p in made[name]] for name in ("raw_bare", "raw_own")]
    assert all(np.array_equal(a, b) for a, b in zip(*labels))
    assert any(a.any() for a in labels[0])                     # the pseudo-labels hold glomeruli
