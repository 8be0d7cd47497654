"""tune / apply / submit / validate / score, and streaming connected components."""
import csv
import json

import cc3d
import numpy as np
import tifffile
import zarr
from helpers.postprocess import _kidney, _write_kidney
from scipy import ndimage as ndi

from nnunet_vasculature.io.rle import rle_decode, rle_encode
from nnunet_vasculature.metrics.surface_dice import surface_dice
from nnunet_vasculature.postprocess.__main__ import main as pp_main
from nnunet_vasculature.postprocess.components import remove_small_components


def test_streaming_components_equal_cc3d():
    rng = np.random.default_rng(0)
    m = rng.random((30, 20, 25)) > 0.8
    lab = cc3d.connected_components(m.astype(np.uint8), connectivity=26)
    sizes = np.bincount(lab.ravel())
    for min_size in (2, 5, 40):
        expect = m & (sizes[lab] >= min_size)
        for block in (1, 4, 64):
            got = np.concatenate([b for _, b in remove_small_components(lambda a, b: m[a:b], 30, min_size, block)])
            np.testing.assert_array_equal(got, expect)


def _plain_postprocessed(prob: np.ndarray, level: int, min_size: int) -> np.ndarray:
    """Threshold, then drop 26-connected components under ``min_size`` voxels (cc3d, not our streaming code)."""
    mask = np.rint(prob * 255) >= level
    if min_size:
        lab = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
        mask &= np.bincount(lab.ravel())[lab] >= min_size
    return mask


def _score_lines(out: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in out.strip().splitlines()}


def test_tune_apply_submit_validate_score(tmp_path, capsys):
    rng = np.random.default_rng(1)
    kidneys = {n: _kidney(rng) for n in ("kidney_2", "kidney_3")}
    labels = [str(_write_kidney(tmp_path, n, *kidneys[n])) for n in kidneys]
    pp = tmp_path / "postprocessing.json"
    assert pp_main(["tune", "-i", str(tmp_path / "probs.zarr"), "--labels", *labels, "-o", str(pp),
                    "--plot", str(tmp_path / "curve.png")]) == 0
    res = json.loads(pp.read_text())
    k = res["threshold_u8"]
    # the chosen threshold is the best of all 256 by mean surface Dice (checked by brute force)
    means = [np.mean([surface_dice(np.rint(p * 255) >= t, g, empty_score=0.0) for g, p in kidneys.values()])
             for t in range(256)]
    assert k == int(np.argmax(means)) and abs(res["mean_curve"][k] - max(means)) < 1e-9
    assert res["competition"] == "sennet" and res["nnunet_vasculature_version"]
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the speckle makes component removal help: it must be chosen, and every reported score is that of the
    # masks post-processed plainly (threshold + cc3d), so a wrong removal or a wrong score cannot pass
    size = res["min_component_voxels"]
    assert size > 0
    for option, score in res["component_removal_scores"].items():
        plain = np.mean([surface_dice(_plain_postprocessed(p, k, int(option)), g, empty_score=0.0)
                         for g, p in kidneys.values()])
        assert abs(score - plain) < 1e-9, option
    assert res["component_removal_scores"][str(size)] > res["component_removal_scores"]["0"]
    assert res["mean_surface_dice"] == res["component_removal_scores"][str(size)]

    # apply: the mask equals threshold (+ component removal) computed directly
    out = tmp_path / "mask_k2"
    assert pp_main(["apply", "-i", str(tmp_path / "probs.zarr" / "kidney_2"), "-pp", str(pp), "-o", str(out)]) == 0
    mask = np.stack([tifffile.imread(out / f"{z:04d}.tif") for z in range(24)]) > 0
    g2, p2 = kidneys["kidney_2"]
    expect = _plain_postprocessed(p2, k, size)
    assert (expect != (np.rint(p2 * 255) >= k)).any()          # the removal changed something
    np.testing.assert_array_equal(mask, expect)
    capsys.readouterr()
    assert pp_main(["score", "--labels", labels[0], "--pred", str(out)]) == 0
    assert abs(float(capsys.readouterr().out.split()[-1]) - surface_dice(mask, g2)) < 1e-6
    assert pp_main(["score", "sennet", "--labels", labels[0], "--pred", str(tmp_path / "probs.zarr" / "kidney_2"),
                    "-pp", str(pp)]) == 0
    assert abs(float(capsys.readouterr().out.split()[-1]) - surface_dice(mask, g2)) < 1e-6

    # submit in the sample's order, validate, score against a solution
    ids = [f"{n}_{z:04d}" for n in ("kidney_3", "kidney_2") for z in range(24)]
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\n" + "".join(f"{i},1 0\n" for i in ids))
    sub = tmp_path / "submission.csv"
    assert pp_main(["submit", "-i", str(tmp_path / "probs.zarr"), "-pp", str(pp), "-o", str(sub),
                    "--sample", str(sample)]) == 0
    rows = list(csv.DictReader(open(sub)))
    assert [r["id"] for r in rows] == ids
    assert pp_main(["validate", str(sub), "--sample", str(sample)]) == 0
    sol = tmp_path / "solution.csv"
    with open(sol, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "rle", "width", "height"])
        for n, (g, _) in kidneys.items():
            for z in range(24):
                w.writerow([f"{n}_{z:04d}", rle_encode(g[z]), 28, 30])
    capsys.readouterr()
    assert pp_main(["score", "--solution", str(sol), "--submission", str(sub)]) == 0
    got = _score_lines(capsys.readouterr().out)
    # the official grouping, done plainly: decode every slice of a kidney, stack, score
    by_kidney = {}
    for row in rows:
        kid, z = row["id"].rsplit("_", 1)
        by_kidney.setdefault(kid, {})[int(z)] = rle_decode(row["rle"], (30, 28))
    for n, (g, _) in kidneys.items():
        pred = np.stack([by_kidney[n][z] for z in sorted(by_kidney[n])])
        assert abs(got[n] - surface_dice(pred, g)) < 1e-6
    assert abs(got["mean"] - np.mean([got[n] for n in kidneys])) < 1e-6


def test_bad_inputs(tmp_path, capsys):
    def _err(args):
        capsys.readouterr()
        rc = pp_main(args)
        return rc, capsys.readouterr().err.strip().splitlines()

    rng = np.random.default_rng(2)
    g, p = _kidney(rng, (6, 8, 9))
    lab = _write_kidney(tmp_path, "kidney_2", g, p)
    z = tmp_path / "probs.zarr"
    # NaN probabilities (float zarr)
    grp = zarr.open_group(str(tmp_path / "nan.zarr"), mode="w")
    a = grp.create_array("kidney_2", shape=p.shape, dtype="float32")
    bad = p.astype(np.float32)
    bad[1, 2, 3] = np.nan
    a[:] = bad
    rc, lines = _err(["tune", "-i", str(tmp_path / "nan.zarr"), "--labels", str(lab), "-o", str(tmp_path / "x.json")])
    assert rc != 0 and len(lines) == 1 and "NaN" in lines[0] and "nan.zarr" in lines[0]
    # out of range
    a[:] = p.astype(np.float32) * 2
    rc, lines = _err(["tune", "-i", str(tmp_path / "nan.zarr"), "--labels", str(lab), "-o", str(tmp_path / "x.json")])
    assert rc != 0 and len(lines) == 1 and "outside [0, 1]" in lines[0]
    # shape mismatch
    grp.create_array("small", shape=(5, 8, 9), dtype="uint8")      # uint8 from elsewhere: taken knowingly
    rc, lines = _err(["tune", "-i", str(tmp_path / "nan.zarr" / "small"), "--labels", str(lab),
                      "-o", str(tmp_path / "x.json"), "--foreign_probabilities"])
    assert rc != 0 and len(lines) == 2 and lines[0].startswith("warning:") and "shape" in lines[1]
    # empty label volume
    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(6):
        tifffile.imwrite(empty / f"{i:04d}.tif", np.zeros((8, 9), np.uint8))
    rc, lines = _err(["tune", "-i", str(z / "kidney_2"), "--labels", str(empty), "-o", str(tmp_path / "x.json")])
    assert rc != 0 and len(lines) == 1 and "empty" in lines[0]
    assert not (tmp_path / "x.json").exists()
    # CSV with the wrong columns; submission with wrong ids; malformed RLE
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\nkidney_5_0000,1 0\nkidney_5_0001,1 0\n")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("image,mask\nkidney_5_0000,1 0\n")
    rc, lines = _err(["validate", str(wrong), "--sample", str(sample)])
    assert rc != 0 and len(lines) == 1 and "missing column(s) id, rle" in lines[0]
    ids = tmp_path / "ids.csv"
    ids.write_text("id,rle\nkidney_5_0000,1 0\nkidney_5_0007,1 0\n")
    rc, lines = _err(["validate", str(ids), "--sample", str(sample)])
    assert rc != 0 and len(lines) == 1 and "kidney_5_0001" in lines[0]
    dup = tmp_path / "dup.csv"
    dup.write_text("id,rle\nkidney_5_0000,1 0\nkidney_5_0000,1 0\n")
    rc, lines = _err(["validate", str(dup), "--sample", str(sample)])
    assert rc != 0 and len(lines) == 1 and "dup.csv:3: a second row for id kidney_5_0000" in lines[0]
    mal = tmp_path / "mal.csv"
    mal.write_text("id,rle\nkidney_5_0000,1 2 3\nkidney_5_0001,1 0\n")
    rc, lines = _err(["validate", str(mal), "--sample", str(sample)])
    assert rc != 0 and "odd number" in lines[0] and "mal.csv:2" in lines[0]
    # a run beyond the slice, when the test images are given
    test_dir = tmp_path / "test" / "kidney_5" / "images"
    test_dir.mkdir(parents=True)
    for i in range(2):
        tifffile.imwrite(test_dir / f"{i:04d}.tif", np.zeros((4, 5), np.uint16))
    oob = tmp_path / "oob.csv"
    oob.write_text("id,rle\nkidney_5_0000,15 10\nkidney_5_0001,1 0\n")
    rc, lines = _err(["validate", str(oob), "--sample", str(sample), "--images", str(tmp_path / "test")])
    assert rc != 0 and "beyond" in lines[0]
    # an interrupted prediction is not used (with a valid postprocessing.json, so that only the
    # incomplete store can be the reason)
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"threshold_u8": 128, "min_component_voxels": 0}))
    rc, lines = _err(["submit", "-i", str(z), "-pp", str(pp), "-o", str(tmp_path / "s.csv")])
    assert rc == 0, lines
    a2 = zarr.open_group(str(z), mode="a")["kidney_2"]
    a2.attrs["complete"] = False
    rc, lines = _err(["submit", "-i", str(z), "-pp", str(pp), "-o", str(tmp_path / "s2.csv")])
    assert rc != 0 and len(lines) == 1 and "incomplete" in lines[0], lines
    assert not (tmp_path / "s2.csv").exists()


def _run(capsys, args):
    """Exit status, stdout and stderr lines of one in-process command (argparse errors exit 2)."""
    capsys.readouterr()
    try:
        rc = pp_main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err.strip().splitlines()


def _kidney_store(path, shape=(40, 30), seed=0):
    """A `predict hubmap-kidney` store (H, W) uint8, written with zarr directly."""
    arr = zarr.create_array(str(path), shape=shape, chunks=shape, dtype="uint8")
    arr[:] = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    return path


def test_postprocessing_json_names_its_competition_and_refuses_another(tmp_path, capsys):
    rng = np.random.default_rng(4)
    lab = _write_kidney(tmp_path, "kidney_2", *_kidney(rng, (6, 8, 9)))
    store = tmp_path / "probs.zarr"
    files = {"sennet": {"threshold_u8": 128, "min_component_voxels": 0},           # written before the record
             "kidney": {"competition": "hubmap-kidney", "threshold_u8": 100, "min_component_pixels": 0},
             "vasculature_old": {"metric": "AP@0.6", "instances": {"threshold": 0.5, "min_size": 0, "dilate": 0,
                                                                    "split": False, "glomerulus_filter": True}}}
    for name, record in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    sub = tmp_path / "sub.csv"
    assert _run(capsys, ["submit", "-i", str(store), "-pp", str(tmp_path / "sennet.json"), "-o", str(sub)])[0] == 0
    for name, owner in (("kidney", "hubmap-kidney"), ("vasculature_old", "hubmap-vasculature")):
        rc, _, err = _run(capsys, ["submit", "-i", str(store), "-pp", str(tmp_path / f"{name}.json"),
                                   "-o", str(tmp_path / f"{name}.csv")])
        assert rc == 2 and len(err) == 1 and owner in err[0] and f"{name}.json" in err[0], err
        assert not (tmp_path / f"{name}.csv").exists()
    slide = _kidney_store(tmp_path / "slide1.zarr")
    rc, _, err = _run(capsys, ["submit", "hubmap-kidney", "-i", str(slide), "-pp", str(tmp_path / "sennet.json"),
                               "-o", str(tmp_path / "k.csv")])
    assert rc == 2 and len(err) == 1 and "of sennet" in err[0], err
    # what tune writes carries its competition and the version, and is read back
    pp = tmp_path / "pp.json"
    assert _run(capsys, ["tune", "-i", str(store), "--labels", str(lab), "-o", str(pp), "--no_cc"])[0] == 0
    record = json.loads(pp.read_text())
    from importlib.metadata import version
    assert record["competition"] == "sennet" and record["nnunet_vasculature_version"] == version("nnunet-vasculature")
    assert _run(capsys, ["apply", "-i", str(store / "kidney_2"), "-pp", str(pp), "-o", str(tmp_path / "m")])[0] == 0


def test_an_output_never_replaces_an_input(tmp_path, capsys):
    rng = np.random.default_rng(5)
    lab = _write_kidney(tmp_path, "kidney_2", *_kidney(rng, (6, 8, 9)))
    store = tmp_path / "probs.zarr"
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"threshold_u8": 128, "min_component_voxels": 0}))
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\n" + "".join(f"kidney_2_{z:04d},1 0\n" for z in range(6)))
    before = {p: p.read_bytes() for p in (pp, sample)}
    for args, flags in ((["submit", "-i", str(store), "-pp", str(pp), "-o", str(pp)], ("-o", "-pp")),
                        (["submit", "-i", str(store), "-pp", str(pp), "-o", str(sample), "--sample", str(sample)],
                         ("-o", "--sample")),
                        (["apply", "-i", str(store / "kidney_2"), "-pp", str(pp), "-o", str(store / "kidney_2"),
                          "--overwrite"], ("-o", "-i")),
                        (["apply", "-i", str(store / "kidney_2"), "-pp", str(pp), "-o", str(store), "--overwrite"],
                         ("-o", "-i")),
                        (["tune", "-i", str(store), "--labels", str(lab), "-o", str(tmp_path / "j.json"),
                          "--plot", str(tmp_path / "j.json")], ("-o", "--plot"))):
        rc, _, err = _run(capsys, args)
        assert rc == 2 and len(err) == 1 and all(f in err[0] for f in flags), (args, err)
    assert {p: p.read_bytes() for p in before} == before
    assert zarr.open_group(str(store), mode="r")["kidney_2"].shape == (6, 8, 9)
    assert not (tmp_path / "j.json").exists()


def test_a_repeated_id_is_refused_by_score_and_validate_alike(tmp_path, capsys):
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\nkidney_5_0000,1 0\nkidney_5_0001,1 0\n")
    sol = tmp_path / "solution.csv"
    sol.write_text("id,rle,width,height\nkidney_5_0000,1 2,4,3\nkidney_5_0001,1 0,4,3\n")
    dup = tmp_path / "dup.csv"                          # the second row for 0000 would replace the first
    dup.write_text("id,rle\nkidney_5_0000,1 2\nkidney_5_0001,1 0\nkidney_5_0000,5 3\n")
    for args in (["score", "--solution", str(sol), "--submission", str(dup)],
                 ["validate", str(dup), "--sample", str(sample)]):
        rc, _, err = _run(capsys, args)
        assert rc == 2 and len(err) == 1 and "dup.csv:4: a second row for id kidney_5_0000 (first on line 2)" \
            in err[0], err
    sol.write_text("id,rle,width,height\nkidney_5_0000,1 2,4,3\nkidney_5_0000,1 0,4,3\n")
    rc, _, err = _run(capsys, ["score", "--solution", str(sol), "--submission", str(sample)])
    assert rc == 2 and "solution.csv:3: a second row for id kidney_5_0000" in err[0]
    # hubmap-kidney and hubmap-vasculature read their tables the same way
    (tmp_path / "k.csv").write_text("id,predicted\na,1 2\na,\n")
    (tmp_path / "ks.csv").write_text("id,encoding\na,1 2\n")
    rc, _, err = _run(capsys, ["score", "hubmap-kidney", "--solution", str(tmp_path / "ks.csv"),
                               "--submission", str(tmp_path / "k.csv")])
    assert rc == 2 and "k.csv:3: a second row for id a" in err[0], err
    (tmp_path / "v.csv").write_text("id,height,width,prediction_string\nt,4,4,\nt,4,4,\n")
    (tmp_path / "vs.csv").write_text("id,height,width,annotations\nt,4,4,\n")
    rc, _, err = _run(capsys, ["score", "hubmap-vasculature", "--solution", str(tmp_path / "vs.csv"),
                               "--submission", str(tmp_path / "v.csv")])
    assert rc == 2 and "v.csv:3: a second row for id t" in err[0], err


def test_score_reads_the_slice_size_of_every_solution_row(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("id,rle\nk_0000,1 0\nk_0001,9 2\n")
    sol = tmp_path / "solution.csv"          # the second slice is wider: its run 9..10 fits it, not the first size
    sol.write_text("id,rle,width,height\nk_0000,1 0,4,2\nk_0001,9 2,5,2\n")
    rc, _, err = _run(capsys, ["score", "--solution", str(sol), "--submission", str(sub)])
    assert rc == 2 and len(err) == 1 and "solution.csv:3" in err[0] and "5 x 2" in err[0], err


def test_files_of_another_competition_are_named(tmp_path, capsys):
    (tmp_path / "solution.csv").write_text("id,encoding,width,height\na,1 4,4,4\n")
    (tmp_path / "sub.csv").write_text("id,predicted\na,1 4\n")
    (tmp_path / "vsub.csv").write_text("id,height,width,prediction_string\nt,4,4,\n")
    for args, other in ((["score", "--solution", str(tmp_path / "solution.csv"), "--submission",
                          str(tmp_path / "sub.csv")], "score hubmap-kidney"),
                        (["validate", str(tmp_path / "vsub.csv"), "--sample", str(tmp_path / "vsub.csv")],
                         "validate hubmap-vasculature"),
                        (["tune", "-i", str(_kidney_store(tmp_path / "s1.zarr")), "--labels",
                          str(tmp_path / "solution.csv"), "-o", str(tmp_path / "pp.json")], "tune hubmap-kidney"),
                        (["score", "hubmap-kidney", "--solution", str(tmp_path / "vsub.csv"), "--submission",
                          str(tmp_path / "sub.csv")], "score hubmap-vasculature")):
        rc, _, err = _run(capsys, args)
        assert rc == 2 and len(err) == 1 and other in err[0], (args, err)


def test_tune_warns_when_the_threshold_is_at_the_edge(tmp_path, capsys):
    """An under-trained model: vessels at probability ~0.015, background below; the best level is ~4/255."""
    rng = np.random.default_rng(6)
    gt = ndi.gaussian_filter(rng.random((12, 16, 16)), 2) > 0.52
    prob = np.where(gt, 4 / 255, 1 / 255)
    lab = _write_kidney(tmp_path, "kidney_2", gt, prob)
    rc, _, err = _run(capsys, ["tune", "-i", str(tmp_path / "probs.zarr"), "--labels", str(lab),
                               "-o", str(tmp_path / "pp.json"), "--no_cc"])
    assert rc == 0 and json.loads((tmp_path / "pp.json").read_text())["threshold_u8"] <= 4
    assert any(line.startswith("warning:") and "low end" in line and "train longer" in line for line in err), err


def test_overlay_draws_a_users_prediction(tmp_path, capsys):
    from nnunet_vasculature.cli import main
    rng = np.random.default_rng(7)
    g, p = _kidney(rng, (8, 20, 24))
    lab = _write_kidney(tmp_path, "kidney_2", g, p)
    images = tmp_path / "kidney_2" / "images"
    images.mkdir()
    for z in range(8):
        tifffile.imwrite(images / f"{z:04d}.tif", (p[z] * 60000).astype(np.uint16))
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"threshold_u8": 128, "min_component_voxels": 0}))
    capsys.readouterr()
    assert main(["overlay", "sennet", "--labels", str(lab), "--pred", str(tmp_path / "probs.zarr" / "kidney_2"),
                 "-pp", str(pp), "-o", str(tmp_path / "o.png")]) == 0
    from PIL import Image
    im = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    # the three colours of the code appear: truth only, prediction only, both
    for colour in ((0, 200, 0), (230, 0, 200), (255, 220, 0)):
        near = (np.abs(im.astype(int) - (0.45 * 128 + 0.55 * np.array(colour))) < 80).all(-1)
        assert near.any(), colour


def test_submit_follows_the_sample_and_refuses_ids_it_does_not_list(tmp_path, capsys):
    """The rows come in the sample's order; a sample id without prediction, or a prediction the sample does not
    list, is one line and no CSV."""
    from nnunet_vasculature.cli import main
    gt, prob = _kidney(np.random.default_rng(9), (4, 10, 12))
    _write_kidney(tmp_path, "kidney_5", gt, prob)
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    ids = [f"kidney_5_{z:04d}" for z in range(4)]
    for name, sample_ids, message in (("ok", ids[::-1], None), ("short", ids[:3], "predicted id kidney_5_0003 is not"),
                                      ("long", ids + ["kidney_6_0000"], "id kidney_6_0000 has no prediction")):
        sample = tmp_path / f"{name}.csv"
        sample.write_text("id,rle\n" + "".join(f"{i},1 0\n" for i in sample_ids))
        out = tmp_path / f"sub_{name}.csv"
        capsys.readouterr()
        rc = main(["submit", "-i", str(tmp_path / "probs.zarr"), "-pp", str(pp), "-o", str(out),
                   "--sample", str(sample)])
        if message is None:
            assert rc == 0
            with open(out, newline="") as f:
                assert [r["id"] for r in csv.DictReader(f)] == ids[::-1]
        else:
            err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
            assert rc == 2 and len(err) == 1 and message in err[0] and not out.exists(), err


def test_submit_checks_the_sample_before_post_processing(tmp_path, monkeypatch, capsys):
    """A sample that does not match is refused before any kidney is post-processed (a whole kidney takes minutes)."""
    from nnunet_vasculature.cli import main
    from nnunet_vasculature.postprocess import sennet

    def no_masks(*args, **kwargs):
        raise AssertionError("post-processing ran before the sample was checked")
    gt, prob = _kidney(np.random.default_rng(9), (4, 10, 12))
    _write_kidney(tmp_path, "kidney_5", gt, prob)
    pp = tmp_path / "pp.json"
    pp.write_text('{"competition": "sennet", "threshold_u8": 128, "min_component_voxels": 0}')
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\n" + "".join(f"kidney_5_{z:04d},1 0\n" for z in range(3)))
    monkeypatch.setattr(sennet, "masks", no_masks)
    assert main(["submit", "-i", str(tmp_path / "probs.zarr"), "-pp", str(pp), "-o", str(tmp_path / "s.csv"),
                 "--sample", str(sample)]) == 2
    assert "kidney_5_0003 is not" in capsys.readouterr().err


def test_threshold_curve_of_one_case_is_one_line(tmp_path, monkeypatch):
    """With one kidney its curve is the mean: the picture draws it once (a second line would hide under the first)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from nnunet_vasculature.postprocess.tune import plot_curves
    drawn = []
    save = Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        drawn.extend((line.get_label(), line.get_ydata()) for ax in fig.axes for line in ax.get_lines()
                     if len(line.get_ydata()) == 256)
        return save(fig, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    curve = np.linspace(0.2, 0.8, 256) * np.linspace(1, 0, 256)

    def shared(lines):
        return [(a, b) for i, (a, ya) in enumerate(lines) for b, yb in lines[i + 1:] if np.array_equal(ya, yb)]
    plot_curves({"kidney_1": curve}, curve, 100, "surface Dice", tmp_path / "one.png")
    assert drawn and not shared(drawn), shared(drawn)
    assert "kidney_1" in drawn[0][0] and "mean" in drawn[0][0]     # the one line is named for both
    drawn.clear()
    plot_curves({"kidney_1": curve, "kidney_2": curve[::-1]}, (curve + curve[::-1]) / 2, 100, "surface Dice",
                tmp_path / "two.png")
    assert [name for name, _ in drawn] == ["kidney_1", "kidney_2", "mean"] and not shared(drawn)


def test_component_sizes_from_kept_foreground_threads_or_a_second_read_agree_with_cc3d():
    """Issue 36.1: the first pass keeps the labelled foreground (sparse) so the second pass reads nothing; past its
    memory budget it reads and labels again; blocks labelled on 2 threads: all three give cc3d's masks."""
    from nnunet_vasculature.postprocess.components import StreamingComponents
    rng = np.random.default_rng(4)
    m = ndi.gaussian_filter(rng.random((37, 26, 31)), 1) > 0.55
    lab = cc3d.connected_components(m.astype(np.uint8), connectivity=26)
    sizes = np.bincount(lab.ravel())
    reads = []

    def read(a, b):
        reads.append(a)
        return m[a:b]
    wanted = [0, 3, 20, 200]
    expect = [m & (sizes[lab] >= s) for s in wanted]
    for workers, keep_bytes, reads_again in ((1, 1 << 20, False), (2, 1 << 20, False), (1, 0, True), (2, 0, True)):
        reads.clear()
        comps = StreamingComponents(read, 37, 8, workers, keep_bytes)
        first = len(reads)
        got = [np.concatenate(parts) for parts in zip(*[blocks for _, blocks in comps.filtered_blocks(wanted)])]
        assert (len(reads) > first) == reads_again, (workers, keep_bytes)
        for g, e in zip(got, expect):
            np.testing.assert_array_equal(g, e)
