"""Transfer benchmark at demo scale (CPU): after `make demo` (random 2-class head, and from scratch),
train the same budget with the head initialised from the source's background/vessel logits and compare
held-out surface Dice.

    make demo && .venv/bin/python benchmarks/transfer.py [--demo demo-output]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402

from nnunet_vasculature.demo.run import DATASET_ID, HELD_OUT  # noqa: E402
from nnunet_vasculature.inference.predict import predict  # noqa: E402
from nnunet_vasculature.io.volumes import open_labels, open_probabilities  # noqa: E402
from nnunet_vasculature.postprocess.surface_dice import surface_dice_sweep  # noqa: E402
from nnunet_vasculature.postprocess.tune import LEVEL_HALF  # noqa: E402
from nnunet_vasculature.trainers import ext_trainer_value  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=Path("demo-output"))
    a = ap.parse_args()
    demo = a.demo.resolve()
    summary = json.loads((demo / "summary.json").read_text())
    env = dict(os.environ, nnUNet_raw=str(demo / "nnUNet_raw"), nnUNet_preprocessed=str(demo / "nnUNet_preprocessed"),
               nnUNet_results=str(demo / "nnUNet_results"), nnUNet_extTrainer=ext_trainer_value(),
               nnUNet_vasculature_demo_schedule=summary["schedule_epochs_x_iterations"])
    os.environ.update(env)
    trainer = "VesselTransferTrainer_sourceHead_demo"
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr",
                    trainer, "-p", "nnUNetPlans_Task008", "-device", "cpu"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = demo / "nnUNet_results" / "Dataset501_SenNetDemo" / f"{trainer}__nnUNetPlans_Task008__3d_fullres"
    held = demo / "kaggle" / "train" / HELD_OUT
    out = demo / "probs_heldout_source_head.zarr"
    predict(held, out, folder, ["0"], device="cpu", overwrite=True)
    sweep = surface_dice_sweep(open_probabilities(f"{out}/{HELD_OUT}")[0], open_labels(held / "labels"))
    ft, sc = summary["fine_tuned"], summary["from_scratch_same_budget"]
    rows = [["imported weights, random head (default)", f"{ft['surface_dice_at_0.5']:.4f}",
             f"{max(summary_curve(demo)):.4f}"],
            ["imported weights, head from source bg/vessel", f"{sweep[LEVEL_HALF]:.4f}", f"{sweep.max():.4f}"],
            ["from scratch", f"{sc['surface_dice_at_0.5']:.4f}", f"{sc['surface_dice_at_best_threshold']:.4f}"]]
    print(f"held-out {HELD_OUT}, schedule {summary['schedule_epochs_x_iterations']} (epochs x iterations), CPU")
    print(table(rows, ["start", "surface Dice @0.5", "surface Dice @best threshold"]))


def summary_curve(demo: Path) -> list[float]:
    return json.loads((demo / "postprocessing.json").read_text())["mean_curve"]


if __name__ == "__main__":
    main()
