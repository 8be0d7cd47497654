"""``nnunet-vasculature demo hubmap-kidney``: the HuBMAP Hacking the Kidney chain on CPU.

synthesize small slides -> convert (2D tissue tiles, leave-one-patient-out folds) -> stock
``nnUNetv2_plan_and_preprocess -c 2d`` -> a CPU-sized copy of the plans (``demo.cpu_plans``: fewer stages,
at most 32 features; the same preprocessed data) -> stock ``nnUNetv2_train ... 2d 0 -tr nnUNetTrainer_demo
-p nnUNetPlans_cpu`` -> predict hubmap-kidney on the held-out (fold 0 validation) slides and the test slides -> tune
the threshold on the held-out slides -> submit -> validate -> score against the hidden ``solution.csv``;
writes ``overlay.png`` (thumbnail, truth, prediction of a test slide) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

DATASET_ID = 612
PLANS = "nnUNetPlans_cpu"
# quick (the test suite's run) / full: synthetic slides (train, test, side in px), downscale, epochs x iterations,
# network stages, batch size. Cases are 128 px tiles and the patch 128 x 128 (what nnU-Net plans for them).
SETTINGS = {True: {"slides": (4, 1, 384), "downscale": 2, "schedule": "1x4", "stages": 4, "batch": 2},
            False: {"slides": (6, 2, 1600), "downscale": 4, "schedule": "10x25", "stages": 5, "batch": 4}}


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> dict:
    from nnunet_vasculature.dataset_conversion.hubmap_kidney import CASES_FILE, convert_hubmap_kidney
    from nnunet_vasculature.demo.cpu_plans import write_small_plans
    from nnunet_vasculature.demo.steps import Steps, bin_path, demo_workspace
    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.slide import SlidePredictor, predict_slides
    from nnunet_vasculature.postprocess import hubmap_kidney as pp
    from nnunet_vasculature.postprocess.tune import write_postprocessing
    from nnunet_vasculature.synthetic.hubmap_kidney import synthesize

    t_start = time.time()
    cfg = SETTINGS[bool(quick)]
    # few worker processes: every spawned nnU-Net worker re-imports torch (seconds on a busy 2-core machine);
    # nnUNet_def_n_proc bounds the export pool of nnU-Net's end-of-training validation. The quick run trains
    # with nnUNet_n_proc_DA=0 (nnU-Net's single-threaded augmenter; the planner needs >= 1, so only for training).
    train_env = {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0" if quick else "2")}
    out, logs, dirs, env = demo_workspace(out, cfg["schedule"],
                                          nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "1"))
    steps = Steps(10, logs)
    kaggle = out / "kaggle"
    n_train, n_test, size = cfg["slides"]
    if not (kaggle / "train.csv").exists():
        steps.run("synthesize slides (Kaggle layout)", synthesize, kaggle, seed, "small", False, n_train, n_test, size)
    else:
        steps.run("synthesize slides (kept from an earlier run)", lambda: None)
    raw = steps.run(f"convert to nnU-Net raw ({cfg['downscale']}x downscaled 128 px tiles)", convert_hubmap_kidney,
                    kaggle, DATASET_ID, raw_root=dirs["nnUNet_raw"], downscale=cfg["downscale"], tile=128,
                    overwrite=True)
    pre = dirs["nnUNet_preprocessed"] / raw.name
    # --quick skips nnU-Net's dataset check (one more spawned worker); tests/test_hubmap_kidney.py runs it
    steps.run("nnUNetv2_plan_and_preprocess -c 2d", steps.shell, "plan_and_preprocess",
              [bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1"]
              + ([] if quick else ["--verify_dataset_integrity"]), env)
    shutil.copy(raw / "splits_final.json", pre / "splits_final.json")
    steps.run(f"CPU-sized plans {PLANS} ({cfg['stages']} stages, <= 32 features, patch 128 x 128)",
              write_small_plans, pre, "2d", source="nnUNetPlans", target=PLANS, n_stages=cfg["stages"],
              max_features=32, patch=(128, 128), batch_size=cfg["batch"])
    steps.run(f"nnUNetv2_train fold 0 -tr nnUNetTrainer_demo -p {PLANS} ({cfg['schedule']} epochs x iterations)",
              steps.shell, "train", [bin_path("nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr",
                                     "nnUNetTrainer_demo",
                                     "-p", PLANS, "-device", "cpu"], dict(env, **train_env))
    model = dirs["nnUNet_results"] / raw.name / f"nnUNetTrainer_demo__{PLANS}__2d"
    meta = json.loads((raw / CASES_FILE).read_text())
    val_cases = set(json.loads((raw / "splits_final.json").read_text())[0]["val"])
    held = sorted(s for s, k in meta["kidneys"].items() if any(c["case"] in val_cases for c in k["cases"]))
    val_dir, test_dir = out / "pred_val", out / "pred_test"
    tta = not quick          # the quick run skips flip TTA (the tests compare TTA with nnU-Net's predictor)
    options = PredictionOptions.of(model, ["0"], tta=tta)
    sp = SlidePredictor(options, "cpu")        # loaded once for both
    steps.run("predict hubmap-kidney: held-out slides", predict_slides, [kaggle / "train" / f"{s}.tiff" for s in held],
              val_dir, options, "cpu", overwrite=True, predictor=sp)
    steps.run("predict hubmap-kidney: test slides", predict_slides, [kaggle / "test"], test_dir, options, "cpu",
              overwrite=True, predictor=sp)
    res = steps.run("tune threshold on held-out slides", pp.determine, pp.stores([val_dir]), kaggle / "train.csv",
                    [] if quick else pp.CC_PIXELS)
    write_postprocessing(res, out / "postprocessing.json", pp.COMPETITION)
    sub = out / "submission.csv"
    steps.run("submit + validate", lambda: (pp.submit(pp.stores([test_dir]), out / "postprocessing.json", sub,
                                                      kaggle / "sample_submission.csv"),
                                            pp.validate(sub, kaggle / "sample_submission.csv", kaggle / "test")))
    test_scores = steps.run("score against hidden labels", pp.score_csv, kaggle / "solution.csv", sub)
    shown = sorted((kaggle / "test").glob("*.tiff"))[0]
    pp.draw_overlay(shown, kaggle / "solution.csv", sub, out / "overlay.png")
    summary = {"held_out_slides": held, "held_out_dice_at_0.5": res["mean_dice_at_0.5"],
               "held_out_dice_tuned": res["mean_dice"], "threshold": res["threshold"],
               "min_component_pixels": res["min_component_pixels"],
               "test_dice_per_slide": test_scores, "test_dice_mean": float(np.mean(list(test_scores.values()))),
               "schedule": cfg["schedule"], "plans": PLANS, "quick": bool(quick), "seed": seed,
               "seconds": round(time.time() - t_start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``demo {competition}``."""
    sub = groups["demo"]
    p = sub.add_parser("hubmap-kidney", help="HuBMAP Hacking the Kidney chain on synthetic slides (CPU)")
    p.add_argument("-o", dest="output", type=Path, default=Path("demo-hubmap-kidney"))
    p.add_argument("--quick", action="store_true", help="tiny slides and schedule (the test suite's run)")
    p.add_argument("--seed", type=int, default=0)

    def run(a: argparse.Namespace) -> None:
        run_demo(a.output, a.quick, a.seed)
    p.set_defaults(func=run)
