"""tune / apply / submit / validate / score, and streaming connected components."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cc3d
import numpy as np
import tifffile
import zarr
from scipy import ndimage as ndi

from nnunet_vasculature.io.rle import rle_decode, rle_encode
from nnunet_vasculature.postprocess.__main__ import main as pp_main
from nnunet_vasculature.postprocess.components import remove_small_components
from nnunet_vasculature.postprocess.surface_dice import surface_dice

PP = [sys.executable, "-m", "nnunet_vasculature.postprocess"]


def _kidney(rng, shape=(24, 30, 28)):
    f = ndi.gaussian_filter(rng.random(shape), 2)
    gt = f > np.quantile(f, 0.85)
    prob = ndi.gaussian_filter(gt.astype(float), 1.2) * 0.8 + rng.random(shape) * 0.25
    prob[rng.random(shape) > 0.995] = 0.9          # speckle that component removal can clean
    return gt, np.clip(prob, 0, 1)


def _write_kidney(root: Path, name: str, gt, prob):
    lab = root / name / "labels"
    lab.mkdir(parents=True)
    for z in range(gt.shape[0]):
        tifffile.imwrite(lab / f"{z:04d}.tif", gt[z].astype(np.uint8) * 255)
    g = zarr.open_group(str(root / "probs.zarr"), mode="a")
    a = g.create_array(name, shape=prob.shape, chunks=(1, *prob.shape[1:]), dtype="uint8")
    a[:] = np.rint(prob * 255).astype(np.uint8)
    a.attrs.update({"kidney": name, "slice_ids": [f"{name}_{z:04d}" for z in range(gt.shape[0])], "complete": True})
    return lab


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


def test_tune_apply_submit_validate_score(tmp_path):
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
    assert res["mean_surface_dice"] >= res["mean_surface_dice_at_0.5"]
    assert (tmp_path / "curve.png").stat().st_size > 1000
    if res["min_component_voxels"]:
        assert res["component_removal_scores"][str(res["min_component_voxels"])] > res["component_removal_scores"]["0"]

    # apply: the mask equals threshold (+ component removal) computed directly
    out = tmp_path / "mask_k2"
    assert pp_main(["apply", "-i", str(tmp_path / "probs.zarr" / "kidney_2"), "-pp", str(pp), "-o", str(out)]) == 0
    mask = np.stack([tifffile.imread(out / f"{z:04d}.tif") for z in range(24)]) > 0
    g2, p2 = kidneys["kidney_2"]
    expect = np.rint(p2 * 255) >= k
    if res["min_component_voxels"]:
        lab = cc3d.connected_components(expect.astype(np.uint8), connectivity=26)
        expect &= np.bincount(lab.ravel())[lab] >= res["min_component_voxels"]
    np.testing.assert_array_equal(mask, expect)
    r = subprocess.run(PP + ["score", "--labels", labels[0], "--pred", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert abs(float(r.stdout.split()[-1]) - surface_dice(mask, g2)) < 1e-6
    r = subprocess.run(PP + ["score", "--labels", labels[0], "--pred", str(tmp_path / "probs.zarr" / "kidney_2"),
                             "-pp", str(pp)], capture_output=True, text=True)
    assert abs(float(r.stdout.split()[-1]) - surface_dice(mask, g2)) < 1e-6

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
    r = subprocess.run(PP + ["score", "--solution", str(sol), "--submission", str(sub)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = {line.split()[0]: float(line.split()[1]) for line in r.stdout.strip().splitlines()}
    # the official grouping, done plainly: decode every slice of a kidney, stack, score
    by_kidney = {}
    for row in rows:
        kid, z = row["id"].rsplit("_", 1)
        by_kidney.setdefault(kid, {})[int(z)] = rle_decode(row["rle"], (30, 28))
    for n, (g, _) in kidneys.items():
        pred = np.stack([by_kidney[n][z] for z in sorted(by_kidney[n])])
        assert abs(got[n] - surface_dice(pred, g)) < 1e-6
    assert abs(got["mean"] - np.mean([got[n] for n in kidneys])) < 1e-6


def _err(args):
    r = subprocess.run(PP + args, capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    return r.returncode, lines


def test_bad_inputs(tmp_path):
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
    grp.create_array("small", shape=(5, 8, 9), dtype="uint8")
    rc, lines = _err(["tune", "-i", str(tmp_path / "nan.zarr" / "small"), "--labels", str(lab),
                      "-o", str(tmp_path / "x.json")])
    assert rc != 0 and len(lines) == 1 and "shape" in lines[0]
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
    assert rc != 0 and "duplicate id kidney_5_0000" in lines[0]
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
