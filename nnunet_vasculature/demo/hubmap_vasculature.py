"""``demo hubmap-vasculature``: the HuBMAP vasculature chain on synthetic tiles, CPU only.

synthesize -> convert -> stock ``nnUNetv2_plan_and_preprocess -c 2d`` (target spacing 2 px: 512² tiles
become 256² cases) -> a CPU-sized copy of the plans (``demo.cpu_plans``: fewer stages, 32 features at most,
a smaller patch; the same preprocessed data) -> stock ``nnUNetv2_train -tr nnUNetTrainer_demo -p
nnUNetPlans_cpu`` (fold 0 = source WSI 1 held out) -> stock ``nnUNetv2_predict --save_probabilities`` on the
held-out dataset-1 tiles and the test tiles -> tune (AP@0.6 on the held-out tiles) -> instances -> submit ->
validate -> score against the hidden solution; ``overlay.png`` and ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

DATASET_ID = 602
PLANS = "nnUNetPlans_cpu"
# quick / full: dataset-1 tiles to synthesize, epochs x iterations, network stages, patch, batch size
SETTINGS = {True: {"tiles": 8, "schedule": "2x10", "stages": 4, "patch": (128, 128), "batch": 2},
            False: {"tiles": 24, "schedule": "10x20", "stages": 5, "patch": (128, 128), "batch": 4}}
GRIDS = {True: {"thresholds": [0.3, 0.5, 0.7], "min_sizes": [0, 16], "dilations": [0, 1, 2]},
         False: {"thresholds": [0.3, 0.4, 0.5, 0.6, 0.7], "min_sizes": [0, 16, 64], "dilations": [0, 1, 2]}}


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> dict:
    """Run the chain into ``out``; returns the summary (also written to ``out/summary.json``)."""
    import tifffile

    from nnunet_vasculature.dataset_conversion.hubmap_vasculature import CASES_FILE, convert_vasculature
    from nnunet_vasculature.demo.cpu_plans import write_small_plans
    from nnunet_vasculature.demo.steps import Steps, bin_path, demo_workspace
    from nnunet_vasculature.errors import atomic_file
    from nnunet_vasculature.io.polygons import read_polygons
    from nnunet_vasculature.postprocess.hubmap_vasculature import (
        COMPETITION,
        determine,
        draw_overlay,
        load_params,
        score_csv,
        submit,
        validate,
    )
    from nnunet_vasculature.postprocess.instances import write_instances
    from nnunet_vasculature.postprocess.tune import write_postprocessing
    from nnunet_vasculature.synthetic.hubmap_vasculature import synthesize
    from nnunet_vasculature.trainers.common import VALIDATION_ENV

    t_start = time.time()
    cfg = SETTINGS[bool(quick)]
    # few worker processes: every spawned nnU-Net worker re-imports torch (seconds on a busy 2-core machine);
    # nnUNet_def_n_proc bounds the export pool of nnU-Net's final validation. The quick run trains with
    # nnUNet_n_proc_DA=0 (nnU-Net's single-threaded augmenter; the planner needs >= 1, so only for training).
    train_env = {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0" if quick else "2")}
    if quick:   # the demo scores held-out tiles itself; nnU-Net's final validation would only repeat it
        train_env[VALIDATION_ENV] = "0"
    out, logs, dirs, env = demo_workspace(out, cfg["schedule"],
                                          nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "1"))
    steps = Steps(10, logs)
    kaggle = out / "kaggle"
    steps.run("synthesize tiles (Kaggle layout)", synthesize, kaggle, seed, cfg["tiles"], True)
    raw = steps.run("convert hubmap-vasculature -> nnU-Net raw", convert_vasculature, kaggle, DATASET_ID,
                    "HuBMAPVascDemo", dirs["nnUNet_raw"], overwrite=True)
    pre = dirs["nnUNet_preprocessed"] / raw.name
    # --quick skips nnU-Net's dataset check (one more spawned worker); tests/test_hubmap_vasculature_convert runs it
    steps.run("nnUNetv2_plan_and_preprocess -c 2d (target spacing 2: 256² cases)", steps.shell, "plan_and_preprocess",
              [bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1", "-npfp", "1",
               "-overwrite_target_spacing", "999", "2", "2"] + ([] if quick else ["--verify_dataset_integrity"]), env)
    shutil.copy(raw / "splits_final.json", pre / "splits_final.json")
    steps.run(f"CPU-sized plans {PLANS} ({cfg['stages']} stages, <= 32 features, patch {cfg['patch']})",
              write_small_plans, pre, "2d", source="nnUNetPlans", target=PLANS, n_stages=cfg["stages"],
              max_features=32, patch=cfg["patch"], batch_size=cfg["batch"])
    steps.run(f"nnUNetv2_train fold 0 nnUNetTrainer_demo -p {PLANS} ({cfg['schedule']} epochs x iterations, CPU)",
              steps.shell, "train", [bin_path("nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr",
                                     "nnUNetTrainer_demo",
                                     "-p", PLANS, "-device", "cpu"],
              dict(env, **train_env))
    cases = json.loads((raw / CASES_FILE).read_text())
    held = sorted(c for c, m in cases.items() if m["source_wsi"] == 1 and m["dataset"] == 1)
    tests = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTs").glob("*_0000.png"))
    pred_in, probs = out / "predict_input", out / "probs"
    shutil.rmtree(pred_in, ignore_errors=True)
    pred_in.mkdir()
    for c in held:
        shutil.copy(raw / "imagesTr" / f"{c}_0000.png", pred_in)
    for c in tests:
        shutil.copy(raw / "imagesTs" / f"{c}_0000.png", pred_in)
    shutil.rmtree(probs, ignore_errors=True)
    steps.run(f"nnUNetv2_predict --save_probabilities: {len(held)} held-out tiles (WSI 1) + {len(tests)} test tiles",
              steps.shell, "predict", [bin_path("nnUNetv2_predict"), "-i", str(pred_in), "-o", str(probs), "-d",
                                       str(DATASET_ID), "-c", "2d", "-f", "0", "-tr", "nnUNetTrainer_demo", "-p",
                                       PLANS, "-device", "cpu", "--save_probabilities", "--disable_tta",
                                       "-npp", "1", "-nps", "1"], env)
    pp = out / "postprocessing.json"

    def tune() -> dict:
        res = determine([probs], kaggle / "polygons.jsonl", GRIDS[bool(quick)])
        write_postprocessing(res, pp, COMPETITION)
        return res
    res = steps.run("tune threshold / min size / dilation by AP@0.6 on the held-out tiles", tune)
    inst = steps.run("instances (tuned parameters) for all predicted tiles", write_instances, probs,
                     out / "instances", load_params(pp), True)
    sub = out / "submission.csv"
    n_inst = steps.run("submit + validate", lambda: (submit([probs], pp, sub, kaggle / "sample_submission.csv"),
                                                     validate(sub, kaggle / "sample_submission.csv"))[1])
    test_ap = steps.run("score against the hidden test solution", score_csv, kaggle / "solution.csv", sub)
    truth = read_polygons(kaggle / "test_polygons.jsonl")
    shown = max(tests, key=lambda t: sum(a["type"] == "blood_vessel" for a in truth[t]))
    with np.load(inst / f"{shown}.npz") as z:
        draw_overlay(tifffile.imread(kaggle / "test" / f"{shown}.tif"), truth[shown], z["instances"], z["scores"],
                     out / "overlay.png", shown)
    summary = {"heldout_tiles": held, "heldout_ap": res["ap"], "heldout_ap_at_defaults": res["ap_at_defaults"],
               "instances": res["instances"], "test_tiles": tests, "test_instances": n_inst, "test_ap": test_ap,
               "overlay_tile": shown, "schedule": cfg["schedule"], "plans": PLANS, "quick": bool(quick),
               "seed": seed, "seconds": round(time.time() - t_start, 1)}
    with atomic_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``demo {competition}``."""
    sub = groups["demo"]
    p = sub.add_parser("hubmap-vasculature", help="the HuBMAP vasculature chain on synthetic tiles (CPU)")
    p.add_argument("-o", "--output", type=Path, default=Path("demo-hubmap-vasculature"), help="output folder")
    p.add_argument("--quick", action="store_true", help="fewer tiles and iterations (the test suite's run)")
    p.add_argument("--seed", type=int, default=0)

    def run(a: argparse.Namespace) -> None:
        run_demo(a.output, a.quick, a.seed)
    p.set_defaults(func=run)
