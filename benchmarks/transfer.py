"""Transfer benchmark at demo scale (CPU): fine-tuned from the stand-in source model vs from scratch,
over several seeds and two budgets, plus the frozen-encoder and source-head variants.

Needs a finished `make demo` (it reuses the demo's converted, imported and preprocessed dataset 501 and
its synthetic kidneys). Every (variant, budget, seed) trains fold 0 into its own results folder under
--work, predicts the held-out kidney_1_dense and scores it with surface Dice at 0.5 and at the best
threshold of its own curve. Runs are appended to --work/runs.jsonl as they finish, and runs already
there are skipped, so an interrupted or partial run can be continued and subsets combined:

    make demo                                             # its two models are seed "demo" (--no-with-demo-run)
    nice -n 15 .venv/bin/python benchmarks/transfer.py [--demo demo-output] [--work bench-transfer] \\
        [--seeds 0 1 2] [--budgets demo long] [--variants transfer scratch frozenEncoder sourceHead]
    .venv/bin/python benchmarks/transfer.py --report      # the table from runs.jsonl, nothing trained

`--source v2` fine-tunes from the same stand-in network saved as an nnU-Net v2 model folder
(--work/source_v2/Dataset008_HepaticVessel/nnUNetTrainer__nnUNetPlans__3d_fullres: plans.json, dataset.json in
TotalSegmentator's labels, fold_0/checkpoint_final.pth with nnU-Net's checkpoint keys) and imported through the v2
path of `import-pretrained` (plans nnUNetPlans_Dataset008_HepaticVessel, next to the demo's nnUNetPlans_Task008;
both share the demo's preprocessed data). Same seeds as the v1 runs; scratch runs do not depend on the source and
are shared. v1 against v2 on the demo budget:

    nice -n 15 .venv/bin/python benchmarks/transfer.py --source v1 v2 --budgets demo --variants transfer scratch

`--reuse-quality DIR` takes the fine-tuned models of the demo budget from `benchmarks/quality.py --work DIR`
(its baseline is the same trainer, schedule, seed and training script on the same synthetic kidneys,
converted, imported and preprocessed the same way; checked: its dataset fingerprint and plans must equal
the demo's) instead of training them again; they are predicted and scored here as the others.

A "seed" seeds Python, numpy and torch in the training process (network initialisation, the order of
nnU-Net's first batches); nnU-Net's data-augmentation workers draw their own randomness, so two runs
of one seed are not identical: seeds are repetitions, not exact replays.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_sd, table  # noqa: E402

from nnunet_vasculature.demo.sennet import DATASET_ID, HELD_OUT, SCHEDULE  # noqa: E402

VARIANTS = {"transfer": "VesselTransferTrainer_demo", "scratch": "VesselScratchTrainer_demo",
            "frozenEncoder": "VesselTransferTrainer_frozenEncoder_demo",
            "sourceHead": "VesselTransferTrainer_sourceHead_demo"}
_epochs, _iters = (int(v) for v in SCHEDULE.split("x"))
BUDGETS = {"demo": SCHEDULE, "long": f"{3 * _epochs}x{_iters}"}
SOURCES = {"v1": "nnUNetPlans_Task008", "v2": "nnUNetPlans_Dataset008_HepaticVessel"}   # source -> imported plans
V2_MODEL = "Dataset008_HepaticVessel/nnUNetTrainer__nnUNetPlans__3d_fullres"

TRAIN = """
import random, sys
import numpy as np, torch
seed = int(sys.argv[1])
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
sys.argv = ["nnUNetv2_train"] + sys.argv[2:]
from nnunetv2.run.run_training import run_training_entry
run_training_entry()
"""


def write_v2_standin(out: Path) -> Path:
    """The shipped stand-in's network as an nnU-Net v2 model folder under ``out``; returns the folder.

    Plans in nnU-Net's format (the stand-in's architecture, patch, CT spacing and CT intensity properties),
    dataset.json in TotalSegmentator's Dataset008 labels, and a checkpoint with the keys
    ``nnUNetTrainer.save_checkpoint`` writes (network weights, trainer name, init args)."""
    import torch

    from nnunet_vasculature.demo.source_task import SPACING_MM
    from nnunet_vasculature.demo.standin import shipped_standin
    from nnunet_vasculature.pretrained.convert import convert_v1_model
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    folder = out / V2_MODEL
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    model = read_v1_model(shipped_standin()[0], "3d_fullres", (0,))
    net, arch = convert_v1_model(model)
    props = model.plans["dataset_properties"]["intensityproperties"][0]
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": int(model.stage_plans.get("batch_size", 2)),
              "patch_size": [int(p) for p in model.stage_plans["patch_size"]],
              "median_image_size_in_voxels": [int(v) for v in model.stage_plans["median_patient_size_in_voxels"]],
              "spacing": list(SPACING_MM), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None},
              "architecture": arch, "batch_dice": False}
    plans = {"dataset_name": "Dataset008_HepaticVessel", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": list(SPACING_MM),
             "original_median_shape_after_transp": config["median_image_size_in_voxels"],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": float(props["mx"]), "mean": float(props["mean"]), "median": float(props["median"]),
                 "min": float(props["mn"]), "percentile_00_5": float(props["percentile_00_5"]),
                 "percentile_99_5": float(props["percentile_99_5"]), "std": float(props["sd"])}},
             "configurations": {"3d_fullres": config}}
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver_vessels": 1, "liver_tumor": 2},
               "numTraining": 32, "file_ending": ".nii.gz",
               "description": "nnunet-vasculature's Task008 stand-in network, saved as an nnU-Net v2 model"}
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    tmp = folder / "fold_0" / ".checkpoint_final.pth.tmp"
    torch.save({"network_weights": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer_state": None, "grad_scaler_state": None, "logging": {}, "_best_ema": None,
                "current_epoch": 1000, "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                                                     "dataset_json": dataset, "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}, tmp)
    tmp.rename(folder / "fold_0" / "checkpoint_final.pth")
    return folder


def import_v2_standin(demo: Path, work: Path) -> None:
    """The v2 stand-in imported for the demo's dataset (once): plans and weights next to the demo's v1 import."""
    from nnunet_vasculature.io.paths import pretrained_path
    from nnunet_vasculature.pretrained.import_pretrained import import_pretrained
    pre = demo / "nnUNet_preprocessed" / "Dataset501_SenNetDemo"
    if Path(pretrained_path(str(pre), SOURCES["v2"], "3d_fullres")).is_file():
        return
    folder = write_v2_standin(work / "source_v2")
    os.environ.update(nnUNet_raw=str(demo / "nnUNet_raw"), nnUNet_preprocessed=str(demo / "nnUNet_preprocessed"))
    import_pretrained(folder, DATASET_ID, plans_name=SOURCES["v2"])


def reusable(demo: Path, quality: Path | None, variant: str, budget: str, seed: int,
             source: str = "v1") -> tuple[Path, float] | None:
    """The quality benchmark's baseline model of ``seed`` and its training seconds, if it can stand for
    this run (fine-tuned, demo budget, same preprocessed dataset)."""
    if quality is None or variant != "transfer" or budget != "demo" or source != "v1":
        return None
    folder = quality / "results" / f"{VARIANTS[variant]}_seed{seed}" / "Dataset501_SenNetDemo" / \
        f"{VARIANTS[variant]}__nnUNetPlans_Task008__3d_fullres"
    runs = [json.loads(line) for line in (quality / "runs.jsonl").read_text().splitlines()]
    secs = [r["train_seconds"] for r in runs if r["lever"] == "baseline" and r["seed"] == seed
            and r["schedule"] == BUDGETS[budget]]
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file() or not secs or secs[0] is None:
        return None
    for f in ("dataset_fingerprint.json", "nnUNetPlans_Task008.json"):
        a, b = (json.loads((d / "nnUNet_preprocessed" / "Dataset501_SenNetDemo" / f).read_text())
                for d in (demo, quality / "data"))
        if a != b:
            sys.exit(f"--reuse-quality: {f} of {quality / 'data'} differs from the demo's; drop --reuse-quality")
    return folder, float(secs[0])


def run_one(demo: Path, work: Path, variant: str, budget: str, seed: int, quality: Path | None = None,
            source: str = "v1") -> dict:
    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.predict import predict
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.postprocess.surface_dice import surface_dice_sweep
    from nnunet_vasculature.postprocess.tune import LEVEL_HALF
    from nnunet_vasculature.trainers import ext_trainer_value
    from nnunet_vasculature.trainers.common import DEMO_ENV, VALIDATION_ENV

    trainer, schedule, plans = VARIANTS[variant], BUDGETS[budget], SOURCES[source]
    tag = f"{variant}_{budget}_seed{seed}" + ("" if source == "v1" else f"_{source}")
    results = work / "results" / tag
    env = dict(os.environ, nnUNet_raw=str(demo / "nnUNet_raw"), nnUNet_preprocessed=str(demo / "nnUNet_preprocessed"),
               nnUNet_results=str(results), nnUNet_extTrainer=ext_trainer_value(),
               nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "2"),
               **{DEMO_ENV: schedule, VALIDATION_ENV: "0"})   # nnU-Net's final validation: not used here
    log = work / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    reused = reusable(demo, quality, variant, budget, seed, source)
    if reused is None:
        with open(log, "w") as f:
            subprocess.run([sys.executable, "-c", TRAIN, str(seed), str(DATASET_ID), "3d_fullres", "0", "-tr",
                            trainer, "-p", plans, "-device", "cpu"], env=env, stdout=f,
                           stderr=subprocess.STDOUT, check=True)
        train_s = time.time() - t
        folder = results / "Dataset501_SenNetDemo" / f"{trainer}__{plans}__3d_fullres"
    else:
        folder, train_s = reused
        t -= train_s
    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet")})
    held = demo / "kaggle" / "train" / HELD_OUT
    probs = work / "probs" / f"{tag}.zarr"
    predict(held, probs, PredictionOptions.of(folder, ["0"]), "cpu", overwrite=True)
    sweep = surface_dice_sweep(open_probabilities(f"{probs}/{HELD_OUT}")[0], open_labels(held / "labels"))
    return {"variant": variant, "source": source, "plans": plans, "trainer": trainer, "budget": budget,
            "schedule": schedule, "seed": seed,
            "surface_dice_at_0.5": float(sweep[LEVEL_HALF]), "surface_dice_at_best_threshold": float(sweep.max()),
            "best_threshold": float(np.argmax(sweep) / 255), "train_seconds": round(train_s),
            "total_seconds": round(time.time() - t), "model": str(folder),
            "source_model_sha256": json.loads((demo / "summary.json").read_text())["source_model"].get("sha256")}


def demo_runs(demo: Path) -> list[dict]:
    """The fine-tuned and from-scratch models `make demo` itself trained (same trainers and schedule, not
    seeded): one more repetition of the demo budget, scored from the demo's held-out probabilities."""
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.postprocess.surface_dice import surface_dice_sweep
    from nnunet_vasculature.postprocess.tune import LEVEL_HALF
    summary = json.loads((demo / "summary.json").read_text())
    held = demo / "kaggle" / "train" / HELD_OUT
    runs = []
    for variant, name in (("transfer", "fine-tuned"), ("scratch", "from_scratch")):
        sweep = surface_dice_sweep(open_probabilities(f"{demo}/probs_heldout_{name}.zarr/{HELD_OUT}")[0],
                                   open_labels(held / "labels"))
        runs.append({"variant": variant, "trainer": VARIANTS[variant], "budget": "demo",
                     "schedule": summary["schedule_epochs_x_iterations"], "seed": "demo",
                     "surface_dice_at_0.5": float(sweep[LEVEL_HALF]),
                     "surface_dice_at_best_threshold": float(sweep.max()),
                     "best_threshold": float(np.argmax(sweep) / 255),
                     "source_model_sha256": summary["source_model"].get("sha256")})
    return runs


def report(runs: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:     # runs before --source existed are v1 runs; a v2 run is listed as "variant@v2"
        source = r.get("source", "v1")
        groups.setdefault((r["budget"], r["variant"] + ("" if source == "v1" else f"@{source}")), []).append(r)
    rows = []
    for (budget, variant), rs in sorted(groups.items(), key=lambda kv: (list(BUDGETS).index(kv[0][0]),
                                                                         list(VARIANTS).index(kv[0][1].split("@")[0]),
                                                                         kv[0][1])):
        cells = [mean_sd([r[k] for r in rs]) for k in ("surface_dice_at_0.5", "surface_dice_at_best_threshold")]
        rows.append([budget, rs[0]["schedule"], variant, ",".join(str(r["seed"]) for r in rs), *cells,
                     f"{np.mean([r['best_threshold'] for r in rs]):.2f}"])
    head = ["budget", "epochs x it.", "variant", "seeds", "surface Dice @0.5 mean ± sd [min–max]",
            "@best threshold mean ± sd [min–max]", "mean best thr."]
    out = f"held-out {HELD_OUT}, CPU\n" + table(rows, head)
    # paired by seed: each variant minus scratch of the same budget and seed
    prow = []
    for (budget, variant), rs in groups.items():
        if variant == "scratch":
            continue
        base = {r["seed"]: r for r in groups.get((budget, "scratch"), [])}
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        if not pairs:
            continue
        cells = []
        for key in ("surface_dice_at_0.5", "surface_dice_at_best_threshold"):
            d = np.array([a[key] - b[key] for a, b in pairs])
            cells.append(" ".join(f"{x:+.3f}" for x in d) + f" (mean {d.mean():+.3f})")
        prow.append([budget, f"{variant} - scratch", ",".join(str(a["seed"]) for a, _ in pairs), *cells])
    if prow:
        out += "\n\npaired by seed\n" + table(prow, ["budget", "difference", "seeds", "@0.5 per seed",
                                                       "@best threshold per seed"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("demo-output"))
    ap.add_argument("--work", type=Path, default=Path("bench-transfer"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--source", nargs="+", choices=list(SOURCES), default=["v1"],
                    help="source model(s) to fine-tune from: v1 = the demo's import of the shipped stand-in zip, "
                         "v2 = the same network as an nnU-Net v2 model folder, imported through the v2 path")
    ap.add_argument("--reuse-quality", type=Path, metavar="DIR",
                    help="take the fine-tuned demo-budget models from benchmarks/quality.py --work DIR (see above)")
    ap.add_argument("--report", action="store_true", help="train nothing: print the table of the runs done so far "
                                                           "(adding the demo's own pair if not there yet)")
    ap.add_argument("--with-demo-run", action=argparse.BooleanOptionalAction, default=True,
                    help="count the two models `make demo` trained as one more (unseeded) demo-budget repetition")
    a = ap.parse_args()
    demo, work = a.demo.resolve(), a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs_file = work / "runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.exists() else []
    have_demo = (demo / "summary.json").is_file()
    done = {(r["variant"], r["budget"], r["seed"], r.get("source", "v1")) for r in runs}
    if have_demo and a.with_demo_run and ("transfer", "demo", "demo", "v1") not in done and SCHEDULE == json.loads(
            (demo / "summary.json").read_text())["schedule_epochs_x_iterations"]:
        with open(runs_file, "a") as f:
            for r in demo_runs(demo):
                runs.append(r)
                f.write(json.dumps(r) + "\n")
    if not a.report:
        if not have_demo:
            sys.exit(f"{demo}/summary.json not found: run `make demo` (or --demo DIR) first")
        # seed-major order: a cut-short run still has matched transfer/scratch pairs
        # scratch does not depend on the source: trained once, as a v1 run
        todo = [(v, b, s, src) for b in a.budgets for s in a.seeds for src in a.source for v in a.variants
                if (v, b, s, src) not in done and not (b != "demo" and v in ("frozenEncoder", "sourceHead"))
                and not (v == "scratch" and src != "v1")]
        if any(src == "v2" for *_, src in todo):
            import_v2_standin(demo, work)
        for i, (v, b, s, src) in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {v} {b} ({BUDGETS[b]}) seed {s} source {src} ...", flush=True)
            r = run_one(demo, work, v, b, s, a.reuse_quality.resolve() if a.reuse_quality else None, src)
            runs.append(r)
            with open(runs_file, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"   surface Dice {r['surface_dice_at_0.5']:.3f} @0.5, {r['surface_dice_at_best_threshold']:.3f} "
                  f"@{r['best_threshold']:.2f}; {r['total_seconds']} s", flush=True)
    print(report(runs))


if __name__ == "__main__":
    main()
