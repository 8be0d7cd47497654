"""``score sennet --metrics`` / ``--json`` and ``tune sennet --objective``: the hosts' metrics where users call
them (the metrics themselves are checked against the reference implementations in test_kidney_metrics.py)."""
import csv
import json

import numpy as np
import pytest
import tifffile
from helpers.postprocess import _kidney, _write_kidney

from nnunet_vasculature.cli import main
from nnunet_vasculature.io.rle import rle_encode
from nnunet_vasculature.metrics.hosts import kidney_scores


def _dice(pred, gt):
    return 2 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))


@pytest.fixture
def kidney(tmp_path):
    gt, prob = _kidney(np.random.default_rng(4))
    labels = _write_kidney(tmp_path, "kidney_2", gt, prob)
    return tmp_path, gt, np.rint(prob * 255).astype(np.uint8), labels


def test_score_metrics_of_a_mask_folder_and_json(kidney, capsys):
    root, gt, prob_u8, labels = kidney
    pred = prob_u8 >= 140
    pred_dir = root / "pred"
    pred_dir.mkdir()
    for z, plane in enumerate(pred):
        tifffile.imwrite(pred_dir / f"{z:04d}.tif", plane.astype(np.uint8) * 255)
    out = root / "scores.json"
    assert main(["score", "--labels", str(labels), "--pred", str(pred_dir), "--metrics", "nsd0", "dice", "assd",
                 "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["kidney", "nsd0", "dice", "assd"] and lines[1].split()[0] == "kidney_2"
    doc = json.loads(out.read_text())
    expected = kidney_scores(pred, gt, ("nsd0", "dice", "assd"))
    assert doc["kidney_2"]["dice"] == pytest.approx(_dice(pred, gt), abs=1e-12)      # by hand
    assert doc["kidney_2"] == pytest.approx(expected) and doc["mean"] == pytest.approx(expected)
    # the competition's metric alone keeps the one-pass scorer, with the same value
    assert main(["score", "--labels", str(labels), "--pred", str(pred_dir)]) == 0
    assert float(capsys.readouterr().out.splitlines()[0].split()[1]) == pytest.approx(expected["nsd0"], abs=1e-6)


def test_score_metrics_of_probabilities_through_the_postprocessing(kidney, capsys):
    """-pp turns probabilities into the mask (threshold and component removal) before the metrics see it."""
    root, gt, prob_u8, labels = kidney
    pp = root / "pp.json"
    pp.write_text(json.dumps({"competition": "sennet", "threshold_u8": 140, "min_component_voxels": 0}))
    assert main(["score", "--labels", str(labels), "--pred", str(root / "probs.zarr" / "kidney_2"), "-pp", str(pp),
                 "--metrics", "dice", "cldice"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    expected = kidney_scores(prob_u8 >= 140, gt, ("dice", "cldice"))
    assert row[0] == "kidney_2" and [float(x) for x in row[1:]] == pytest.approx(list(expected.values()), abs=1e-6)


def test_score_metrics_of_a_submission_against_a_solution(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rows_sol, rows_sub, dice = [], [], {}
    for name, depth in (("kidney_5", 5), ("kidney_6", 4)):
        gt, prob = _kidney(rng, (depth, 16, 18))
        pred = prob > 0.5
        dice[name] = _dice(pred, gt)
        for z in range(depth):
            rows_sol.append([f"{name}_{z:04d}", rle_encode(gt[z]), 18, 16])
            rows_sub.append([f"{name}_{z:04d}", rle_encode(pred[z])])
    for path, header, rows in ((tmp_path / "solution.csv", ["id", "rle", "width", "height"], rows_sol),
                               (tmp_path / "submission.csv", ["id", "rle"], rows_sub)):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    assert main(["score", "--solution", str(tmp_path / "solution.csv"),
                 "--submission", str(tmp_path / "submission.csv"), "--metrics", "dice", "nsd1"]) == 0
    got = {line.split()[0]: float(line.split()[1]) for line in capsys.readouterr().out.splitlines()[1:]}
    assert got["kidney_5"] == pytest.approx(dice["kidney_5"], abs=1e-6)
    assert got["kidney_6"] == pytest.approx(dice["kidney_6"], abs=1e-6)
    assert got["mean"] == pytest.approx((dice["kidney_5"] + dice["kidney_6"]) / 2, abs=1e-6)
    # --workers 2: the slab tasks on two threads give the same lines; with --scheduler too, one line
    args = ["score", "--solution", str(tmp_path / "solution.csv"), "--submission", str(tmp_path / "submission.csv"),
            "--metrics", "dice", "nsd1", "cldice", "assd"]
    assert main(args) == 0
    one = capsys.readouterr().out
    assert main([*args, "--workers", "2"]) == 0
    assert capsys.readouterr().out == one
    assert main([*args, "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers 0: need at least 1"


def test_tune_by_dice_picks_the_best_dice_threshold(kidney, capsys):
    root, gt, prob_u8, labels = kidney
    out = root / "pp_dice.json"
    assert main(["tune", "-i", str(root / "probs.zarr" / "kidney_2"), "--labels", str(labels), "-o", str(out),
                 "--objective", "dice", "--no_cc"]) == 0
    res = json.loads(out.read_text())
    by_hand = [_dice(prob_u8 >= k, gt) if (prob_u8 >= k).any() else 0.0 for k in range(256)]
    assert res["objective"] == "dice" and res["threshold_u8"] == int(np.argmax(by_hand))
    assert res["mean_score"] == pytest.approx(max(by_hand), abs=1e-9)
    assert "mean_surface_dice" not in res                      # no surface-Dice names on a Dice decision
    capsys.readouterr()
    assert main(["submit", "-i", str(root / "probs.zarr"), "-pp", str(out), "-o", str(root / "s.csv")]) == 0


@pytest.mark.parametrize("args, message", [
    (["score", "--labels", "L", "--pred", "P", "--metrics", "nsd0", "hausdorff"], "unknown metric 'hausdorff'"),
    (["tune", "-i", "P", "--labels", "L", "-o", "pp.json", "--objective", "cldice", "--by_fraction"],
     "--by_fraction needs a score at every level"),
])
def test_bad_metric_requests_are_one_line(kidney, capsys, args, message):
    root, _, _, labels = kidney
    args = [str(labels) if a == "L" else str(root / "probs.zarr" / "kidney_2") if a == "P" else
            str(root / a) if a.endswith(".json") else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
