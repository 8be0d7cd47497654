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
    assert main(["tune", "--competition", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "--labels",
                 str(tmp_path / "polygons.jsonl"), "-o", str(pp), "--thresholds", "0.5", "0.7",
                 "--min_sizes", "0", "20", "--dilations", "0"]) == 0
    res = json.loads(pp.read_text())
    assert res["instances"]["threshold"] == 0.5 and res["instances"]["min_size"] == 20
    assert res["ap"] == pytest.approx(1.0) and res["ap_at_defaults"] < 1.0 and len(res["grid"]) == 4
    sub = tmp_path / "submission.csv"
    assert main(["submit", "--competition", "hubmap-vasculature", "-i", str(tmp_path / "probs"), "-pp", str(pp),
                 "-o", str(sub), "--sample", str(sample)]) == 0
    rows = list(csv.DictReader(open(sub)))
    assert [r["id"] for r in rows] == ["t2", "t1"]
    tok = rows[1]["prediction_string"].split()
    assert len(tok) == 6 and tok[0] == "0" and float(tok[1]) == pytest.approx(0.8)
    decoded = [decode_mask(tok[2], 48, 48), decode_mask(tok[5], 48, 48)]
    assert sorted(int(m.sum()) for m in decoded) == sorted(int(d.sum()) for d in truth["t1"])
    assert main(["validate", "--competition", "hubmap-vasculature", str(sub), "--sample", str(sample)]) == 0
    capsys.readouterr()
    assert main(["score", "--competition", "hubmap-vasculature", "--solution", str(solution),
                 "--submission", str(sub)]) == 0
    assert capsys.readouterr().out.strip() == "AP@0.6 1.000000"
    rows[0]["height"] = "47"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["validate", "--competition", "hubmap-vasculature", str(bad), "--sample", str(sample)]) == 2
    assert "t2: size 47x48" in capsys.readouterr().err
    rows[0]["height"], rows[1]["prediction_string"] = "48", tok[0] + " " + tok[1] + " " + tok[2][:-4] + "AAAA"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["validate", "--competition", "hubmap-vasculature", str(bad), "--sample", str(sample)]) == 2
    assert "t1 instance 0" in capsys.readouterr().err
