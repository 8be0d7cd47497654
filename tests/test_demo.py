"""The reduced demo (--quick) runs the whole chain and leaves every promised output, importing the shipped
stand-in source model instead of training one."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunet_vasculature.demo.sennet import source_model
from nnunet_vasculature.demo.standin import shipped_standin
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.volumes import open_labels, open_probabilities
from nnunet_vasculature.metrics.surface_dice import surface_dice
from nnunet_vasculature.postprocess.sennet import validate


@pytest.mark.slow
def test_quick_demo(tmp_path, capsys):
    from nnunet_vasculature.cli import main
    out = tmp_path / "demo"
    assert main(["demo", "sennet", "-o", str(out), "--quick"]) == 0
    r = capsys.readouterr()
    for name in ("submission.csv", "postprocessing.json", "threshold_curve.png", "overlay.png", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    steps = [line for line in r.out.splitlines() if line.startswith("[") and "done in" in line]
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
    # tune's warning for a threshold at the edge of the 256 levels reaches the demo's user and its summary
    from nnunet_vasculature.postprocess.tune import level_edge_warning
    edge = level_edge_warning(pp["threshold_u8"])
    assert s["tune_warnings"] == ([edge] if edge else [])
    assert all(f"warning: {m}" in r.err for m in s["tune_warnings"])
    # the shipped stand-in was imported as it is: nothing was trained before the fine-tune
    zpath, record = shipped_standin()
    src = s["source_model"]
    assert Path(src["path"]) == zpath.resolve() and src["sha256"] == record["sha256"] and src["matches_its_record"]
    assert src["source_task_held_out_dice_vessel"] == record["held_out"]["mean_dice_vessel"]
    assert not list(out.glob("*.zip")) and "source model: iteration" not in r.out
    plans = json.loads(next((out / "nnUNet_preprocessed").glob("Dataset501_*/nnUNetPlans_Task008.json")).read_text())
    assert plans["transfer_source"]["file"] == str(zpath.resolve())


def test_source_model_record_of_a_given_zip(tmp_path):
    """--pretrained: a zip with a standin record beside it reports that record's score, and says so
    when the zip is not the one the record describes; a zip without a record (the real Task008) has none."""
    zpath, record = shipped_standin()
    given = tmp_path / "mine.zip"
    shutil.copyfile(zpath, given)
    assert source_model(given)["source_task_held_out_dice_vessel"] is None
    (tmp_path / "mine.json").write_text(json.dumps(record))
    info = source_model(given)
    assert info["matches_its_record"] and info["source_task_held_out_dice_vessel"] == record["held_out"][
        "mean_dice_vessel"] and info["kind"] == "given with --pretrained"
    with open(given, "ab") as f:
        f.write(b"\0")
    assert not source_model(given)["matches_its_record"]
    with pytest.raises(UserError, match="not found"):
        source_model(tmp_path / "missing.zip")
