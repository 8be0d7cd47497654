"""HuBMAP vasculature: instances from probabilities, and submit/validate/score/tune through the CLI."""
import csv
import json

import numpy as np
import pytest

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.coco_rle import decode_mask, encode_masks
from nnunet_vasculature.postprocess.instances import InstanceParams, instances_from_probabilities


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_components_scores_min_size_and_glomerulus_filter():
    v = np.zeros((64, 64), np.float32)
    v[_disc(v.shape, 15, 15, 6)] = 0.9
    v[_disc(v.shape, 45, 45, 6)] = 0.7
    v[2:4, 60:62] = 0.8                                      # 4 pixels
    v[_disc(v.shape, 45, 12, 3)] = 0.95                      # inside a glomerulus
    g = np.zeros_like(v)
    g[_disc(v.shape, 45, 12, 10) & ~_disc(v.shape, 45, 12, 4)] = 0.9     # a ring: holes are filled
    lab, scores = instances_from_probabilities(v, g, InstanceParams(min_size=5))
    assert lab.max() == 2 and np.allclose(sorted(scores), [0.7, 0.9])
    assert lab[15, 15] != lab[45, 45] and lab[45, 12] == 0 and lab[3, 61] == 0
    lab2, s2 = instances_from_probabilities(v, g, InstanceParams(glomerulus_filter=False))
    assert lab2.max() == 4 and lab2[45, 12] > 0
    lab3, _ = instances_from_probabilities(v, g, InstanceParams(min_size=5, dilate=2))
    assert (lab3 == lab3[15, 15]).sum() > (lab == lab[15, 15]).sum()
    assert lab3[15, 15 + 7] == lab3[15, 15] and lab3[15, 15 + 9] == 0


def test_split_separates_touching_discs():
    v = np.zeros((64, 96), np.float32)
    v[_disc(v.shape, 32, 30, 12) | _disc(v.shape, 32, 52, 12)] = 0.8
    lab, _ = instances_from_probabilities(v, None, InstanceParams())
    assert lab.max() == 1
    lab, scores = instances_from_probabilities(v, None, InstanceParams(split=True))
    assert lab.max() == 2 and lab[32, 30] != lab[32, 52] and len(scores) == 2


def _probs_folder(folder, tiles):
    folder.mkdir()
    for tid, v in tiles.items():
        p = np.stack([1 - v, v, np.zeros_like(v)])[:, None]            # (C, 1, H, W) as nnU-Net saves 2D
        np.savez_compressed(folder / f"{tid}.npz", probabilities=p.astype(np.float32))


def test_submit_validate_score_tune_cli(tmp_path, capsys):
    shape = (48, 48)
    truth = {"t1": [_disc(shape, 12, 12, 6), _disc(shape, 34, 34, 8)], "t2": [_disc(shape, 20, 30, 7)]}
    probs = {}
    for tid, discs in truth.items():
        v = np.zeros(shape, np.float32)
        for d in discs:
            v[d] = 0.8
        v[_disc(shape, 40, 5, 2)] = 0.95                                  # a small, confident false positive
        probs[tid] = v
    _probs_folder(tmp_path / "probs", probs)
    sample = tmp_path / "sample.csv"
    with open(sample, "w", newline="") as f:
        csv.writer(f).writerows([["id", "height", "width", "prediction_string"], ["t2", 48, 48, ""],
                                 ["t1", 48, 48, ""]])
    solution = tmp_path / "solution.csv"
    with open(solution, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "height", "width", "annotations"])
        for tid, discs in truth.items():
            w.writerow([tid, 48, 48, " ".join(encode_masks(np.stack(discs)))])
    with open(tmp_path / "polygons.jsonl", "w") as f:        # squares covering each disc's box: IoU ~0.78
        for tid, discs in truth.items():
            anns = []
            for d in discs:
                rr, cc = np.nonzero(d)
                anns.append({"type": "blood_vessel", "coordinates": [[[int(cc.min()), int(rr.min())],
                             [int(cc.max()), int(rr.min())], [int(cc.max()), int(rr.max())],
                             [int(cc.min()), int(rr.max())]]]})
            f.write(json.dumps({"id": tid, "annotations": anns}) + "\n")
    pp = tmp_path / "pp.json"
    assert main(["tune", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "--labels",
                 str(tmp_path / "polygons.jsonl"), "-o", str(pp), "--thresholds", "0.5", "0.7",
                 "--min_sizes", "0", "20", "--dilations", "0", "--plot", str(tmp_path / "grid.png")]) == 0
    err = capsys.readouterr().err
    # 0.5 is the smallest threshold tried and 20 the largest size: both may lie short of the optimum
    assert "warning: the best --thresholds 0.5 is the smallest value tried" in err
    assert "warning: the best --min_sizes 20 is the largest value tried" in err
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads(pp.read_text())
    assert res["competition"] == "hubmap-vasculature"
    assert res["instances"]["threshold"] == 0.5 and res["instances"]["min_size"] == 20
    assert res["ap"] == pytest.approx(1.0) and res["ap_at_defaults"] < 1.0 and len(res["grid"]) == 4
    sub = tmp_path / "submission.csv"
    assert main(["submit", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "-pp", str(pp),
                 "-o", str(sub), "--sample", str(sample)]) == 0
    rows = list(csv.DictReader(open(sub)))
    assert [r["id"] for r in rows] == ["t2", "t1"]
    tok = rows[1]["prediction_string"].split()
    assert len(tok) == 6 and tok[0] == "0" and float(tok[1]) == pytest.approx(0.8)
    decoded = [decode_mask(tok[2], 48, 48), decode_mask(tok[5], 48, 48)]
    assert sorted(int(m.sum()) for m in decoded) == sorted(int(d.sum()) for d in truth["t1"])
    assert main(["validate", "hubmap-vasculature", str(sub), "--sample", str(sample)]) == 0
    capsys.readouterr()
    assert main(["score", "hubmap-vasculature", "--solution", str(solution),
                 "--submission", str(sub)]) == 0
    assert capsys.readouterr().out.strip() == "AP@0.6 1.000000"
    rows[0]["height"] = "47"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["validate", "hubmap-vasculature", str(bad), "--sample", str(sample)]) == 2
    assert "t2: size 47x48" in capsys.readouterr().err
    rows[0]["height"], rows[1]["prediction_string"] = "48", tok[0] + " " + tok[1] + " " + tok[2][:-4] + "AAAA"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["validate", "hubmap-vasculature", str(bad), "--sample", str(sample)]) == 2
    assert "t1 instance 0" in capsys.readouterr().err


def _run(capsys, args):
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.strip().splitlines() if "%|" not in line]     # without progress bars


def test_apply_refuses_values_that_make_no_sense(tmp_path, capsys):
    v = np.zeros((32, 32), np.float32)
    v[_disc(v.shape, 16, 16, 6)] = 0.8
    _probs_folder(tmp_path / "probs", {"t1": v})
    for flag, value in (("--min_size", "-5"), ("--dilate", "-1"), ("--threshold", "-0.2"), ("--threshold", "nan")):
        rc, _, err = _run(capsys, ["apply", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "-o",
                                   str(tmp_path / "out"), flag, value])
        assert rc == 2 and any(flag in line for line in err), (flag, err)
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"competition": "hubmap-vasculature", "instances": {
        "threshold": 0.5, "min_size": -3, "dilate": 0, "split": False, "glomerulus_filter": True}}))
    rc, _, err = _run(capsys, ["apply", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "-o",
                               str(tmp_path / "out"), "-pp", str(pp)])
    assert rc == 2 and len(err) == 1 and "min_size -3" in err[0] and "pp.json" in err[0], err
    with pytest.raises(ValueError, match="threshold"):
        InstanceParams(threshold=float("nan"))
    bad = np.stack([1 - v, v, np.zeros_like(v)])[:, None].astype(np.float32)
    bad[1, 0, 3, 3] = np.nan
    np.savez_compressed(tmp_path / "probs" / "t2.npz", probabilities=bad)
    rc, _, err = _run(capsys, ["apply", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "-o",
                               str(tmp_path / "out")])
    assert rc == 2 and len(err) == 1 and "t2.npz" in err[0] and "NaN" in err[0], err
    assert not (tmp_path / "out").exists()


def test_repeated_records_and_tiles_are_refused(tmp_path, capsys):
    v = np.zeros((32, 32), np.float32)
    v[_disc(v.shape, 16, 16, 6)] = 0.8
    _probs_folder(tmp_path / "a", {"t1": v})
    _probs_folder(tmp_path / "b", {"t1": v})
    ann = {"type": "blood_vessel", "coordinates": [[[10, 10], [22, 10], [22, 22], [10, 22]]]}
    (tmp_path / "polygons.jsonl").write_text(json.dumps({"id": "t1", "annotations": [ann]}) + "\n"
                                             + json.dumps({"id": "t1", "annotations": []}) + "\n")
    rc, _, err = _run(capsys, ["tune", "hubmap-vasculature", "-i", str(tmp_path / "a"), "--labels",
                               str(tmp_path / "polygons.jsonl"), "-o", str(tmp_path / "pp.json")])
    assert rc == 2 and len(err) == 1 and "polygons.jsonl:2" in err[0] and "t1" in err[0], err
    pp = tmp_path / "pp.json"
    pp.write_text(json.dumps({"competition": "hubmap-vasculature", "instances": {
        "threshold": 0.5, "min_size": 0, "dilate": 0, "split": False, "glomerulus_filter": True}}))
    rc, _, err = _run(capsys, ["submit", "hubmap-vasculature", "-i", str(tmp_path / "a"), str(tmp_path / "b"),
                               "-pp", str(pp), "-o", str(tmp_path / "sub.csv")])
    assert rc == 2 and len(err) == 1 and "t1" in err[0] and "also in" in err[0], err


def test_overlay_marks_hits_at_iou_06(tmp_path, capsys):
    """Two predicted vessels: one matches its truth square (IoU ~0.78), one is a false positive."""
    import tifffile
    from PIL import Image
    shape = (64, 64)
    v = np.zeros(shape, np.float32)
    v[_disc(shape, 20, 20, 8)] = 0.9
    v[_disc(shape, 48, 48, 5)] = 0.7
    _probs_folder(tmp_path / "probs", {"t1": v})
    ann = {"type": "blood_vessel", "coordinates": [[[12, 12], [28, 12], [28, 28], [12, 28]]]}
    (tmp_path / "polygons.jsonl").write_text(json.dumps({"id": "t1", "annotations": [ann]}) + "\n")
    tifffile.imwrite(tmp_path / "t1.tif", np.full((*shape, 3), 90, np.uint8))
    assert _run(capsys, ["apply", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "-o",
                         str(tmp_path / "inst")])[0] == 0
    rc, out, _ = _run(capsys, ["overlay", "hubmap-vasculature", "--tile", str(tmp_path / "t1.tif"), "--labels",
                               str(tmp_path / "polygons.jsonl"), "--pred", str(tmp_path / "inst"),
                               "-o", str(tmp_path / "o.png")])
    assert rc == 0 and "2 instances, 1 hits" in out, out
    im = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    assert (im == 255).all(-1).sum() > 20                     # the hit's white outline


def test_overlay_reads_a_submission_csv_row(tmp_path, capsys):
    """overlay --pred submission.csv: the row's masks (encoded here with pycocotools, zlib and base64) are drawn
    from their runs one at a time: the disc on the truth square is the hit, the other a false positive. Off the
    diagonal, so that masks decoded transposed would miss."""
    import base64
    import zlib

    import tifffile
    from pycocotools import mask as coco_mask
    shape = (64, 64)

    def encode(mask):
        counts = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        return base64.b64encode(zlib.compress(counts)).decode("ascii")

    row = f"0 0.9 {encode(_disc(shape, 44, 20, 8))} 0 0.7 {encode(_disc(shape, 15, 48, 5))}"
    (tmp_path / "submission.csv").write_text(f"id,height,width,prediction_string\nt1,64,64,{row}\n")
    ann = {"type": "blood_vessel", "coordinates": [[[12, 36], [28, 36], [28, 52], [12, 52]]]}   # (x, y)
    (tmp_path / "polygons.jsonl").write_text(json.dumps({"id": "t1", "annotations": [ann]}) + "\n")
    tifffile.imwrite(tmp_path / "t1.tif", np.full((*shape, 3), 90, np.uint8))
    rc, out, _ = _run(capsys, ["overlay", "hubmap-vasculature", "--tile", str(tmp_path / "t1.tif"), "--labels",
                               str(tmp_path / "polygons.jsonl"), "--pred", str(tmp_path / "submission.csv"),
                               "-o", str(tmp_path / "o.png")])
    assert rc == 0 and "2 instances, 1 hits" in out, out
