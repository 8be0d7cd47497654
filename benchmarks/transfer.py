"""Transfer benchmark at demo scale (CPU): fine-tuned from the stand-in source model vs from scratch,
over several seeds and two budgets, plus the frozen-encoder and source-head variants.

Needs a finished `make demo` (it reuses the demo's converted, imported and preprocessed dataset 501 and
its synthetic kidneys). Every (variant, budget, seed) trains fold 0 into its own results folder under
--work, predicts the held-out kidney_1_dense and scores it with surface Dice at 0.5 and at the best
threshold of its own curve. Runs are appended to --work/runs.jsonl as they finish, and runs already
there are skipped, so an interrupted or partial run can be continued and subsets combined:

    make demo                                             # its two models are seed "demo" (--no-with-demo-run)
    nice -n 15 .venv/bin/python -m benchmarks transfer [--demo demo-output] [--work bench-transfer] \\
        [--seeds 0 1 2] [--budgets demo long] [--variants transfer scratch frozenEncoder sourceHead]
    .venv/bin/python -m benchmarks transfer --report      # the table from runs.jsonl, nothing trained

`--source v2` fine-tunes from the same stand-in network saved as an nnU-Net v2 model folder
(--work/source_v2/Dataset008_HepaticVessel/nnUNetTrainer__nnUNetPlans__3d_fullres: plans.json, dataset.json in
TotalSegmentator's labels, fold_0/checkpoint_final.pth with nnU-Net's checkpoint keys) and imported through the v2
path of `import-pretrained` (plans nnUNetPlans_Dataset008_HepaticVessel, next to the demo's nnUNetPlans_Task008;
both share the demo's preprocessed data). Same seeds as the v1 runs; scratch runs do not depend on the source and
are shared. v1 against v2 on the demo budget:

    nice -n 15 .venv/bin/python -m benchmarks transfer --source v1 v2 --budgets demo --variants transfer scratch

`--reuse-quality DIR` takes the fine-tuned models of the demo budget from `benchmarks/quality.py --work DIR`
(its baseline is the same trainer, schedule, seed and training script on the same synthetic kidneys,
converted, imported and preprocessed the same way; checked: its dataset fingerprint and plans must equal
the demo's) instead of training them again; they are predicted and scored here as the others.

Two more variants make the models of the shift benchmark's model-side levers (`benchmarks/shift.py --lever_models`):
`scaleAug` (VesselTransferTrainer_scaleAug055_demo: scale augmentation down to 0.55) and `percentileNorm` (the
fine-tuning of `transfer` on the demo's kidneys converted with `convert sennet --percentile_norm`, made once under
--work/percentile; two training kidneys and the v1 source only).

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

from benchmarks.common import mean_sd, table
from nnunet_vasculature.demo.sennet import DATASET_ID, HELD_OUT, SCHEDULE

VARIANTS = {"transfer": "VesselTransferTrainer_demo", "scratch": "VesselScratchTrainer_demo",
            "frozenEncoder": "VesselTransferTrainer_frozenEncoder_demo",
            "sourceHead": "VesselTransferTrainer_sourceHead_demo",
            # fine-tuned with scale augmentation down to 0.55 (3rd place's 63 µm emulation): the shift benchmark's
            # model-side lever (benchmarks/shift.py --lever_models scaleAug ...)
            "scaleAug": "VesselTransferTrainer_scaleAug055_demo",
            # fine-tuned as "transfer", on the demo's kidneys converted with `convert sennet --percentile_norm` (each
            # kidney mapped by its own intensity percentiles; predict maps a new kidney the same way): the shift
            # benchmark's other model-side lever (--lever_models percentileNorm ...)
            "percentileNorm": "VesselTransferTrainer_demo"}
_epochs, _iters = (int(v) for v in SCHEDULE.split("x"))
# the learning curve: the demo's epochs, a quarter / half / twice its iterations per epoch (nnU-Net's poly
# learning rate then has the same shape over every budget); "long" (3x the epochs) is kept for earlier records
BUDGETS = {"quarter": f"{_epochs}x{max(1, round(_iters / 4))}", "half": f"{_epochs}x{round(_iters / 2)}",
           "demo": SCHEDULE, "double": f"{_epochs}x{2 * _iters}", "long": f"{3 * _epochs}x{_iters}"}
# training data: fold 0 of the demo's leave-one-kidney-out splits (kidney_2 + kidney_3's sparse and dense parts:
# two physical kidneys, three Kaggle folders), or kidney_2 alone (an extra fold written into splits_final.json);
# both hold out kidney_1_dense
DATA = {"two": 0, "one": 3}
TEST = ("kidney_5", "kidney_6")    # the demo's test kidneys (50.28 and 63.08 µm), scored from solution.csv
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
    from nnunet_vasculature.demo.tiny_model import plans_3d_fullres
    from nnunet_vasculature.pretrained.convert import convert_v1_model
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    folder = out / V2_MODEL
    if (folder / "fold_0" / "checkpoint_final.pth").is_file():
        return folder
    model = read_v1_model(shipped_standin()[0], "3d_fullres", (0,))
    net, arch = convert_v1_model(model)
    props = model.plans["dataset_properties"]["intensityproperties"][0]
    intensity = {key: float(props[v1_key]) for key, v1_key in (
        ("max", "mx"), ("mean", "mean"), ("median", "median"), ("min", "mn"), ("percentile_00_5", "percentile_00_5"),
        ("percentile_99_5", "percentile_99_5"), ("std", "sd"))}
    plans = plans_3d_fullres(   # the tiny-model factory's plans, with the stand-in's architecture and CT properties
        "Dataset008_HepaticVessel", SPACING_MM, [int(p) for p in model.stage_plans["patch_size"]],
        [int(v) for v in model.stage_plans["median_patient_size_in_voxels"]], arch, intensity,
        normalization="CTNormalization", image_reader_writer="SimpleITKIO",
        batch_size=int(model.stage_plans.get("batch_size", 2)))
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
    if quality is None or variant != "transfer" or budget != "demo" or source != "v1":   # not percentileNorm either
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


PERCENTILE = """
import sys
from pathlib import Path
from nnunet_vasculature.dataset_conversion.sennet import convert_sennet
from nnunet_vasculature.io.intensity import PercentileMapping
from nnunet_vasculature.pretrained.import_pretrained import import_pretrained
kaggle, raw, source, dataset_id = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
convert_sennet(kaggle, dataset_id, "SenNetDemo", raw, overwrite=True, percentile_norm=PercentileMapping())
import_pretrained(source, dataset_id)
"""


def percentile_dataset(demo: Path, work: Path) -> Path:
    """The demo's kidneys converted with ``convert sennet --percentile_norm`` (its default percentiles), the demo's
    source model imported and the dataset preprocessed with its plans, as the demo does for its own dataset, under
    ``work/percentile`` (nnUNet_raw and nnUNet_preprocessed; made once, in child processes: nnU-Net reads its
    folders from the environment at import). Returns that folder."""
    root = work / "percentile"
    if (root / ".done").exists():
        return root
    source = json.loads((demo / "summary.json").read_text())["source_model"]["path"]
    env = dict(os.environ, nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"))
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", PERCENTILE, str(demo / "kaggle"), str(root / "nnUNet_raw"), source,
                    str(DATASET_ID)], env=env, check=True)
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-plans_name",
                    SOURCES["v1"], "-c", "3d_fullres", "-np", "2"], env=env, check=True)
    (root / ".done").touch()
    return root


def one_kidney_fold(demo: Path) -> None:
    """Append fold 3 (train on kidney_2 alone, hold out kidney_1_dense) to the demo's splits_final.json once."""
    path = demo / "nnUNet_preprocessed" / "Dataset501_SenNetDemo" / "splits_final.json"
    splits = json.loads(path.read_text())
    fold = {"train": sorted(c for c in splits[0]["train"] if c.startswith("kidney_2_")), "val": splits[0]["val"]}
    if len(splits) == DATA["one"]:
        splits.append(fold)
        path.write_text(json.dumps(splits, indent=1))
    elif splits[DATA["one"]] != fold:
        sys.exit(f"{path}: fold {DATA['one']} is not kidney_2 alone; remove it")


def test_labels(demo: Path, work: Path) -> Path:
    """The hidden test labels of solution.csv as one folder of slice TIFFs per kidney (written once)."""
    import csv

    import tifffile

    from nnunet_vasculature.io.rle import rle_decode
    out = work / "test_labels"
    if (out / ".done").exists():
        return out
    with open(demo / "kaggle" / "solution.csv", newline="") as f:
        for row in csv.DictReader(f):
            kidney, _, z = row["id"].rpartition("_")
            (out / kidney / "labels").mkdir(parents=True, exist_ok=True)
            mask = rle_decode(row["rle"], (int(row["height"]), int(row["width"])))
            tifffile.imwrite(out / kidney / "labels" / f"{z}.tif", mask.astype(np.uint8) * np.uint8(255))
    (out / ".done").touch()
    return out


def run_one(demo: Path, work: Path, variant: str, budget: str, seed: int, quality: Path | None = None,
            source: str = "v1", data: str = "two") -> dict:
    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.predict import predict
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.metrics.surface_dice import surface_dice_sweep
    from nnunet_vasculature.postprocess.tune import LEVEL_HALF
    from nnunet_vasculature.trainers import ext_trainer_value
    from nnunet_vasculature.trainers.common import DEMO_ENV, VALIDATION_ENV

    trainer, schedule, plans, fold = VARIANTS[variant], BUDGETS[budget], SOURCES[source], DATA[data]
    tag = f"{variant}_{budget}_seed{seed}" + ("" if source == "v1" else f"_{source}") + \
        ("" if data == "two" else f"_{data}kidney")
    results = work / "results" / tag
    data_root = percentile_dataset(demo, work) if variant == "percentileNorm" else demo
    env = dict(os.environ, nnUNet_raw=str(data_root / "nnUNet_raw"),
               nnUNet_preprocessed=str(data_root / "nnUNet_preprocessed"),
               nnUNet_results=str(results), nnUNet_extTrainer=ext_trainer_value(),
               nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "2"),
               **{DEMO_ENV: schedule, VALIDATION_ENV: "0"})   # nnU-Net's final validation: not used here
    log = work / "logs" / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    reused = reusable(demo, quality, variant, budget, seed, source) if data == "two" else None
    folder = results / "Dataset501_SenNetDemo" / f"{trainer}__{plans}__3d_fullres"
    if reused is not None:
        folder, train_s = reused
        t -= train_s
    elif (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():   # trained, not yet scored (interrupted)
        train_s = float("nan")
    else:
        with open(log, "w") as f:
            subprocess.run([sys.executable, "-c", TRAIN, str(seed), str(DATASET_ID), "3d_fullres", str(fold), "-tr",
                            trainer, "-p", plans, "-device", "cpu"], env=env, stdout=f,
                           stderr=subprocess.STDOUT, check=True)
        train_s = time.time() - t
    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet")})
    held = demo / "kaggle" / "train" / HELD_OUT
    probs = work / "probs" / f"{tag}.zarr"
    options = PredictionOptions.of(folder, [str(fold)])
    predict(held, probs, options, "cpu", overwrite=True)
    sweep = surface_dice_sweep(open_probabilities(f"{probs}/{HELD_OUT}")[0], open_labels(held / "labels"))
    tuned = int(np.argmax(sweep))
    # the test kidneys (kidney_6 at its own 63.08 µm, resampled by nnU-Net as predict does for a known name):
    # at 0.5, at the level tuned on the held-out kidney, and at the level that would have been best on each
    test_probs = work / "probs" / f"{tag}_test.zarr"
    predict(demo / "kaggle" / "test", test_probs, options, "cpu", overwrite=True)
    truth = test_labels(demo, work)
    test = {k: surface_dice_sweep(open_probabilities(f"{test_probs}/{k}")[0], open_labels(truth / k / "labels"))
            for k in TEST}
    return {"variant": variant, "source": source, "plans": plans, "trainer": trainer, "budget": budget,
            "schedule": schedule, "seed": seed, "data": data, "fold": fold,
            "surface_dice_at_0.5": float(sweep[LEVEL_HALF]), "surface_dice_at_best_threshold": float(sweep.max()),
            "best_threshold": tuned / 255,
            "test_at_0.5": {k: float(v[LEVEL_HALF]) for k, v in test.items()},
            "test_at_tuned_threshold": {k: float(v[tuned]) for k, v in test.items()},
            "test_at_own_best_threshold": {k: float(v.max()) for k, v in test.items()},
            "test_own_best_threshold": {k: int(np.argmax(v)) / 255 for k, v in test.items()},
            "train_seconds": None if train_s != train_s else round(train_s),
            "total_seconds": round(time.time() - t), "model": str(folder),
            "source_model_sha256": json.loads((demo / "summary.json").read_text())["source_model"].get("sha256")}


def demo_runs(demo: Path) -> list[dict]:
    """The fine-tuned and from-scratch models `make demo` itself trained (same trainers and schedule, not
    seeded): one more repetition of the demo budget, scored from the demo's held-out probabilities."""
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.metrics.surface_dice import surface_dice_sweep
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


def _test_mean(r: dict, key: str) -> float | None:
    """Mean over the test kidneys of ``r[key]`` (None for runs recorded before the test kidneys were scored)."""
    return float(np.mean([r[key][k] for k in TEST])) if key in r else None


METRICS = (("held-out @0.5", lambda r: r["surface_dice_at_0.5"]),
           ("held-out @tuned", lambda r: r["surface_dice_at_best_threshold"]),
           ("test @0.5", lambda r: _test_mean(r, "test_at_0.5")),
           ("test @tuned", lambda r: _test_mean(r, "test_at_tuned_threshold")))


def paired(a: list[float], b: list[float]) -> str:
    """``mean ± sd`` of the per-seed differences a - b, the seeds won, and whether the mean is beyond the spread
    (more than two standard errors from 0: about a 95 % interval that excludes 0)."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return f"{d.mean():+.3f} (1 seed)"
    se = d.std(ddof=1) / np.sqrt(len(d))
    verdict = "beyond" if abs(d.mean()) > 2 * se else "within"
    return f"{d.mean():+.3f} ± {d.std(ddof=1):.3f}, {int((d > 0).sum())}/{len(d)} won, {verdict}"


def report(runs: list[dict]) -> str:
    """Mean ± sd per (data, budget, variant) and, paired by seed, each variant minus scratch."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:     # runs before --source / --data existed are v1 runs on two kidneys
        source = r.get("source", "v1")
        groups.setdefault((r.get("data", "two"), r["budget"], r["variant"] + ("" if source == "v1" else f"@{source}")),
                          []).append(r)
    order = lambda kv: (list(DATA).index(kv[0][0]), list(BUDGETS).index(kv[0][1]),
                        list(VARIANTS).index(kv[0][2].split("@")[0]), kv[0][2])
    rows = []
    for (data, budget, variant), rs in sorted(groups.items(), key=order):
        cells = []
        for _, get in METRICS:
            values = [v for v in map(get, rs) if v is not None]
            cells.append(mean_sd(values) if values else "–")
        rows.append([data, budget, rs[0]["schedule"], variant, ",".join(str(r["seed"]) for r in rs), *cells,
                     f"{np.mean([r['best_threshold'] for r in rs]):.2f}"])
    head = ["kidneys", "budget", "epochs x it.", "variant", "seeds", *(f"{m} mean ± sd [min–max]" for m, _ in METRICS),
            "tuned thr."]
    out = f"surface Dice (tolerance 0): held-out {HELD_OUT}; test = mean of {', '.join(TEST)}; CPU\n" + \
        table(rows, head)
    prow = []
    for (data, budget, variant), rs in sorted(groups.items(), key=order):
        if variant == "scratch":
            continue
        base = {r["seed"]: r for r in groups.get((data, budget, "scratch"), [])}
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        if not pairs:
            continue
        cells = []
        for _, get in METRICS:
            ab = [(get(a), get(b)) for a, b in pairs if get(a) is not None and get(b) is not None]
            cells.append(paired([a for a, _ in ab], [b for _, b in ab]) if ab else "–")
        prow.append([data, budget, f"{variant} - scratch", ",".join(str(a["seed"]) for a, _ in pairs), *cells])
    if prow:
        out += "\n\npaired by seed: mean ± sd of the differences, seeds won, beyond or within the spread\n" + \
            table(prow, ["kidneys", "budget", "difference", "seeds", *(m for m, _ in METRICS)])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("demo-output"))
    ap.add_argument("--work", type=Path, default=Path("bench-transfer"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--data", nargs="+", choices=list(DATA), default=["two"],
                    help="training kidneys: two = fold 0 (kidney_2 + kidney_3), one = kidney_2 alone (an extra fold)")
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
    done = {(r["variant"], r["budget"], r["seed"], r.get("source", "v1"), r.get("data", "two")) for r in runs}
    if have_demo and a.with_demo_run and ("transfer", "demo", "demo", "v1", "two") not in done and \
            SCHEDULE == json.loads((demo / "summary.json").read_text())["schedule_epochs_x_iterations"]:
        with open(runs_file, "a") as f:
            for r in demo_runs(demo):
                runs.append(r)
                f.write(json.dumps(r) + "\n")
    if not a.report:
        if not have_demo:
            sys.exit(f"{demo}/summary.json not found: run `make demo` (or --demo DIR) first")
        # seed-major order: a cut-short run still has matched transfer/scratch pairs
        # scratch does not depend on the source: trained once, as a v1 run
        todo = [(v, b, s, src, d) for d in a.data for b in a.budgets for s in a.seeds for src in a.source
                for v in a.variants
                if (v, b, s, src, d) not in done and not (b != "demo" and v in ("frozenEncoder", "sourceHead"))
                and not (v == "percentileNorm" and (d != "two" or src != "v1"))
                and not (v == "scratch" and src != "v1")]
        if any(src == "v2" for *_, src, _ in todo):
            import_v2_standin(demo, work)
        if any(d == "one" for *_, d in todo):
            one_kidney_fold(demo)
        for i, (v, b, s, src, d) in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {v} {b} ({BUDGETS[b]}) seed {s} source {src} kidneys {d} ...", flush=True)
            r = run_one(demo, work, v, b, s, a.reuse_quality.resolve() if a.reuse_quality else None, src, d)
            runs.append(r)
            with open(runs_file, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"   held-out surface Dice {r['surface_dice_at_0.5']:.3f} @0.5, "
                  f"{r['surface_dice_at_best_threshold']:.3f} @{r['best_threshold']:.2f}; test "
                  f"{_test_mean(r, 'test_at_0.5'):.3f} @0.5, {_test_mean(r, 'test_at_tuned_threshold'):.3f} @tuned; "
                  f"{r['total_seconds']} s", flush=True)
    print(report(runs))


if __name__ == "__main__":
    main()
