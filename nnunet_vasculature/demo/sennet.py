"""``nnunet-vasculature demo`` / ``make demo``: the whole chain on CPU from data the project makes.

synthesize -> convert -> the shipped stand-in Task008 model (v1 zip layout, trained once to convergence on
a synthetic liver-CT source task by ``standin --iterations 250``) -> import-pretrained -> preprocess -> fine-tune
(and the same budget from scratch) -> predict held-out and test kidneys -> tune -> submit -> validate ->
score against the hidden test labels. One line per step; tools' own output goes to logs/.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nnunet_vasculature.demo.steps import Steps, bin_path, demo_workspace
from nnunet_vasculature.errors import UserError

DATASET_ID = 501
HELD_OUT = "kidney_1_dense"       # fold 0 of the leave-one-kidney-out splits
SCHEDULE, QUICK_SCHEDULE = "5x30", "2x4"   # epochs x iterations of both demo trainings (<= 10 min on 2 cores)

def run_demo(out: Path, pretrained: Path | None = None, quick: bool = False, seed: int = 0) -> dict:
    from nnunet_vasculature.dataset_conversion.sennet import convert_sennet
    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.predict import predict
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.metrics.surface_dice import surface_dice_sweep
    from nnunet_vasculature.postprocess.sennet import (
        COMPETITION,
        determine,
        draw_overlay,
        plot_curve,
        submit,
        validate,
    )
    from nnunet_vasculature.postprocess.sennet_score import score_csv
    from nnunet_vasculature.postprocess.tune import LEVEL_HALF, level_edge_warning, warn, write_postprocessing
    from nnunet_vasculature.pretrained.import_pretrained import import_pretrained
    from nnunet_vasculature.synthetic.sennet import synthesize
    from nnunet_vasculature.trainers.common import DEMO_ENV, VALIDATION_ENV

    # nnU-Net's final validation of fold 0 is skipped: the demo scores the same held-out kidney itself below
    out, logs, dirs, env = demo_workspace(out, QUICK_SCHEDULE if quick else SCHEDULE, **{VALIDATION_ENV: "0"})
    steps = Steps(10, logs)
    kaggle = out / "kaggle"
    if not (kaggle / "train_rles.csv").exists():
        steps.run("synthesize small kidneys (Kaggle layout)", synthesize, kaggle, seed)
    else:
        steps.run("synthesize small kidneys (kept from an earlier run)", lambda: None)
    steps.run("convert sennet -> nnU-Net raw", convert_sennet, kaggle, DATASET_ID, "SenNetDemo",
              dirs["nnUNet_raw"], overwrite=True)
    source_info = steps.run("check the source model (shipped stand-in unless --pretrained)", source_model, pretrained)
    source = Path(source_info["path"])
    steps.run("import-pretrained (fingerprint + plan + convert weights)", import_pretrained, source, DATASET_ID)
    steps.run("nnUNetv2_preprocess (imported plans)", steps.shell, "preprocess",
              [bin_path("nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-plans_name", "nnUNetPlans_Task008", "-c",
               "3d_fullres", "-np", "2"], env)
    models = {}
    for tag, trainer in (("fine-tuned", "VesselTransferTrainer_demo"), ("from scratch", "VesselScratchTrainer_demo")):
        steps.run(f"nnUNetv2_train fold 0 {trainer} ({env[DEMO_ENV]} epochs x iterations, CPU)", steps.shell,
                  f"train_{trainer}", [bin_path("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer,
                                       "-p", "nnUNetPlans_Task008", "-device", "cpu"], env)
        models[tag] = dirs["nnUNet_results"] / "Dataset501_SenNetDemo" / f"{trainer}__nnUNetPlans_Task008__3d_fullres"
    held = kaggle / "train" / HELD_OUT
    probs = {tag: out / f"probs_heldout_{tag.replace(' ', '_')}.zarr" for tag in models}

    def predict_all():
        for tag, folder in models.items():
            predict(held, probs[tag], PredictionOptions.of(folder, ["0"]), "cpu", overwrite=True)
        predict(kaggle / "test", out / "probs_test.zarr", PredictionOptions.of(models["fine-tuned"], ["0"]), "cpu",
                overwrite=True)
    steps.run(f"predict {HELD_OUT} (held out) and the test kidneys", predict_all)
    pp_file = out / "postprocessing.json"

    def tune():
        res = determine([f"{probs['fine-tuned']}/{HELD_OUT}"], [held / "labels"])
        write_postprocessing(res, pp_file, COMPETITION)
        plot_curve(res, out / "threshold_curve.png")
        return res
    res = steps.run(f"tune threshold on {HELD_OUT}", tune)
    warnings = [m for m in (level_edge_warning(res["threshold_u8"]),) if m]     # what `tune` itself would print
    for message in warnings:
        warn(message)

    def submit_and_score():
        submit([out / "probs_test.zarr"], pp_file, out / "submission.csv", kaggle / "sample_submission.csv")
        validate(out / "submission.csv", kaggle / "sample_submission.csv")
        half = logs / "postprocessing_at_0.5.json"
        write_postprocessing({"threshold_u8": LEVEL_HALF, "min_component_voxels": 0}, half, COMPETITION)
        submit([out / "probs_test.zarr"], half, logs / "submission_at_0.5.csv", kaggle / "sample_submission.csv")
        return score_csv(kaggle / "solution.csv", out / "submission.csv"), \
            score_csv(kaggle / "solution.csv", logs / "submission_at_0.5.csv")
    test_tuned, test_half = steps.run("submit, validate and score the test kidneys", submit_and_score)
    scratch = surface_dice_sweep(open_probabilities(f"{probs['from scratch']}/{HELD_OUT}")[0],
                                 open_labels(held / "labels"))
    draw_overlay(held / "labels", f"{probs['fine-tuned']}/{HELD_OUT}", out / "overlay.png", pp_file)
    summary = {
        "held_out_kidney": HELD_OUT,
        "fine_tuned": {"surface_dice_at_0.5": res["mean_surface_dice_at_0.5"],
                       "surface_dice_at_tuned_threshold": res["mean_curve"][res["threshold_u8"]],
                       "tuned_threshold": res["threshold"],
                       "min_component_voxels": res["min_component_voxels"],
                       "surface_dice_tuned_postprocessing": res["mean_surface_dice"]},
        "from_scratch_same_budget": {"surface_dice_at_0.5": float(scratch[LEVEL_HALF]),
                                     "surface_dice_at_best_threshold": float(scratch.max()),
                                     "best_threshold": float(np.argmax(scratch) / 255)},
        "test_kidneys_tuned_threshold": test_tuned, "test_kidneys_at_0.5": test_half,
        "tune_warnings": warnings,
        "schedule_epochs_x_iterations": env[DEMO_ENV], "source_model": source_info,
        "minutes": round((time.time() - steps.t0) / 60, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"outputs in {out}: submission.csv postprocessing.json threshold_curve.png overlay.png summary.json")
    return summary


def source_model(pretrained: Path | None) -> dict:
    """Which source model the demo imports: the shipped stand-in (``pretrained`` None) or the given zip,
    with its sha256 and, where a ``standin`` build record is known for it, its held-out source-task score."""
    from nnunet_vasculature.demo.standin import record_path, sha256, shipped_standin
    if pretrained is None:
        try:
            path, record = shipped_standin()
        except FileNotFoundError as e:
            raise UserError(f"{e}; build one with 'nnunet-vasculature standin --iterations 250 -o FILE.zip' and pass "
                            f"--pretrained FILE.zip") from None
        kind = "shipped stand-in (nnunet_vasculature/demo/data)"
    else:
        path = Path(pretrained)
        if not path.exists():
            raise UserError(f"{path}: not found")
        rec = record_path(path)
        record = json.loads(rec.read_text()) if path.is_file() and rec.is_file() else None
        kind = "given with --pretrained"
    info = {"path": str(path.resolve()), "kind": kind, "sha256": sha256(path) if path.is_file() else None}
    if record is not None:
        held = record["held_out"]
        info.update({"matches_its_record": record.get("sha256") == info["sha256"],
                     "source_task_held_out_dice_vessel": held["mean_dice_vessel"],
                     "source_task_held_out_dice_tumour": held["mean_dice_tumour"],
                     "source_task_held_out_cases": len(held["cases"]),
                     "built_by": record.get("command"), "training_iterations": record.get("iterations")})
    else:
        info["source_task_held_out_dice_vessel"] = None   # e.g. the real Task008 zip: not scored here
    score = info["source_task_held_out_dice_vessel"]
    print(f"  source model: {info['path']} ({kind}), sha256 {str(info['sha256'])[:12]}..., held-out source-task "
          f"vessel Dice {'not known' if score is None else f'{score:.3f}'}")
    return info


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``demo sennet``."""
    p = groups["demo"].add_parser("sennet", help="the SenNet chain on synthetic 3D kidneys (CPU, ~10 minutes)")
    p.add_argument("-o", dest="output", type=Path, default=Path("demo-output"))
    p.add_argument("--pretrained", type=Path, help="the real Task008_HepaticVessel.zip instead of the stand-in")
    p.add_argument("--quick", action="store_true", help="tiny schedule (for CI): checks the chain, not the model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(a.output, a.pretrained, a.quick, a.seed))
