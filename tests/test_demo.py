"""The reduced demo (--quick) runs the whole chain and leaves every promised output."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnunet_vasculature.io.volumes import open_labels, open_probabilities
from nnunet_vasculature.postprocess.submission import validate
from nnunet_vasculature.postprocess.surface_dice import surface_dice


def test_quick_demo(tmp_path):
    out = tmp_path / "demo"
    cli = str(Path(sys.executable).parent / "nnunet-vasculature")
    r = subprocess.run([cli, "demo", "sennet", "-o", str(out), "--quick"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    for name in ("submission.csv", "postprocessing.json", "threshold_curve.png", "overlay.png", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    steps = [line for line in r.stdout.splitlines() if line.startswith("[") and "done in" in line]
    assert len(steps) == 10
    # the submission validates against the sample and covers every test slice
    sample = out / "kaggle" / "sample_submission.csv"
    assert validate(out / "submission.csv", sample) == len(list(csv.DictReader(open(sample))))
    s = json.loads((out / "summary.json").read_text())
    ft = s["fine_tuned"]
    pp = json.loads((out / "postprocessing.json").read_text())
    # the reported held-out score is the surface Dice of the held-out probabilities at the written
    # threshold, recomputed here from the files with the plain metric
    prob, _ = open_probabilities(out / "probs_heldout_fine-tuned.zarr" / "kidney_1_dense")
    labels = open_labels(out / "kaggle" / "train" / "kidney_1_dense" / "labels")
    again = surface_dice(np.asarray(prob[:]) >= pp["threshold_u8"], np.asarray(labels[:]))
    assert abs(again - ft["surface_dice_at_tuned_threshold"]) <= 1e-9
    assert set(s["test_kidneys_tuned_threshold"]) == {"kidney_5", "kidney_6"}
    assert pp["threshold_u8"] == round(ft["tuned_threshold"] * 255) and len(pp["mean_curve"]) == 256
