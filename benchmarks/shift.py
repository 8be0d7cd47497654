"""Shift benchmark (CPU): models trained on the demo's 50 µm kidneys, scored on kidneys they have never seen at
another voxel size (50, 63.08, 80 µm) or with another acquisition (``synthesize sennet --acquisition``), for the
levers that may recover what the shift costs.

Needs a finished `make demo` (its held-out kidney_1_dense and nnU-Net folders) and trained models: nnU-Net model
folders with fold_0, one per seed, e.g. those `benchmarks/transfer.py` leaves under
WORK/results/<tag>/Dataset501_SenNetDemo/<trainer>__nnUNetPlans_Task008__3d_fullres. The shifted test kidneys are
synthesized once into --work/kaggle (kidney_5's anatomy, not trained on; with the demo's seed the training kidneys
there are the demo's) with their truth as label slices in --work/test_labels.

Levers, each scored per (model, kidney) with surface Dice at tolerance 0 at 0.5, at the threshold tuned on the
held-out 50 µm kidney_1_dense (predicted with the same options: the model's own best level there) and at the best
threshold of the shifted kidney itself (what the transferred threshold costs):

- ``spacing_ignored``: predicted with --spacing 50 (the training kidneys' voxel size), only where the kidney is not
  at 50 µm. ``predict`` refuses a kidney name missing from its known-spacing table without --spacing (one line
  naming --spacing: nothing is assumed, no prediction); a user who passes 50, or renames the kidney to a known
  50 µm one, gets this.
- ``spacing_given``: the true voxel size (nnU-Net resamples to the model's spacing); also the hosts' five metrics
  (nsd0 nsd1 cldice assd dice) at the held-out threshold.
- ``tta_scale``: the true voxel size and predict's --tta_scale F (the input resampled F times finer than the model's
  spacing; the held-out threshold tuned with it too).
- ``by_fraction``: spacing_given's probabilities thresholded where the foreground is the fraction tuned on the
  held-out kidney (`tune --by_fraction`), instead of at the held-out level.
- a model-side lever (``--lever_models NAME DIR ...``, one folder per --seeds label): e.g. ``percentile_norm`` needs
  models converted with `convert sennet --percentile_norm` and trained on that dataset (predict applies a model's
  intensity mapping only when its dataset.json records one: on the demo's models it is a no-op, so it is not a lever
  of them), ``scaleAug`` models trained with VesselTransferTrainer_scaleAug055_demo; predicted as spacing_given.

One JSON line per (variant, seed, kidney, lever) is appended to --work/runs.jsonl as it finishes; lines already there
are skipped, so a run resumes. The table: mean ± sd over seeds, and each lever minus spacing_given paired by seed:

    nice -n 10 .venv/bin/python -m benchmarks shift --demo demo-output --work bench-shift \\
        --models M0 M1 M2 --seeds 0 1 2 [--variant transfer] [--levers ...] [--dry_run]
    .venv/bin/python -m benchmarks shift --work bench-shift --report
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import mean_sd, table
from benchmarks.transfer import paired, test_labels
from nnunet_vasculature.demo.sennet import HELD_OUT
from nnunet_vasculature.synthetic.sennet import shifted_name

TRAIN_UM = 50.0
# (voxel µm, acquisition): the voxel sizes alone, kidney_6's size with a grey-value drift, each acquisition at 50 µm
SHIFTS = ((50.0, "same"), (63.08, "same"), (80.0, "same"), (63.08, "contrast"), (50.0, "contrast"),
          (50.0, "noisy"), (50.0, "rings"), (50.0, "partial"))
KIDNEYS = {shifted_name(v, a): (v, a) for v, a in SHIFTS}
LEVERS = ("spacing_ignored", "spacing_given", "tta_scale", "by_fraction")
METRICS_LEVER = "spacing_given"


def prepare(work: Path, demo: Path, seed: int) -> Path:
    """The shifted test kidneys in --work/kaggle and their truth as label slices in --work/test_labels (once)."""
    from nnunet_vasculature.synthetic.sennet import synthesize
    kaggle = work / "kaggle"
    if not (kaggle / "test_kidneys.json").is_file():
        synthesize(kaggle, seed, tests=SHIFTS, overwrite=True)
    first = Path("train") / HELD_OUT / "images" / "0000.tif"
    if (demo / "kaggle" / first).is_file() and (demo / "kaggle" / first).read_bytes() != (kaggle / first).read_bytes():
        print(f"warning: {kaggle / first} differs from the demo's: --synth_seed {seed} is not the demo's seed "
              f"(the shifted kidneys are still unseen, but not the demo's kidney_5)", file=sys.stderr)
    return test_labels(work, work)


class Bench:
    """Predictions and scores of one model folder; ``tag`` names its stores under --work/probs."""

    def __init__(self, a: argparse.Namespace, seed: str, folder: Path, tag: str):
        self.a, self.seed, self.folder, self.tag = a, seed, folder, tag
        self._heldout: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def options(self, tta_scale: float = 1.0):
        from nnunet_vasculature.inference.options import PredictionOptions
        return PredictionOptions.of(self.folder, ["0"], tta_scale=tta_scale)

    def _predict(self, inputs: Path, store: Path, name: str, tta_scale: float = 1.0,
                 spacing: float | None = None) -> tuple[object, float | None]:
        """The kidney's uint8 probabilities (predicted once into ``store``; an interrupted one resumed) and the
        seconds predicting took (None: found complete)."""
        import zarr

        from nnunet_vasculature.inference.predict import predict
        from nnunet_vasculature.io.store import existing_run
        from nnunet_vasculature.io.volumes import open_probabilities
        found = existing_run(zarr.open_group(str(store), mode="r"), name) if store.exists() else None
        seconds = None
        if found is None or not found.complete:
            t = time.time()
            predict(inputs, store, self.options(tta_scale), self.a.device, spacing=spacing)
            seconds = round(time.time() - t, 1)
        return open_probabilities(f"{store}/{name}")[0], seconds

    def heldout(self, tta_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Surface Dice at each level and the level histogram of the held-out kidney (cached in --work/heldout)."""
        from nnunet_vasculature.io.volumes import open_labels
        from nnunet_vasculature.metrics.surface_dice import surface_dice_sweep
        from nnunet_vasculature.postprocess.morphology import level_histogram
        if tta_scale not in self._heldout:
            cache = self.a.work / "heldout" / f"{self.tag}_tta{tta_scale:g}.json"
            if not cache.is_file():
                held = self.a.demo / "kaggle" / "train" / HELD_OUT
                prob, _ = self._predict(held, self.a.work / "probs" / f"{self.tag}_heldout_tta{tta_scale:g}.zarr",
                                        HELD_OUT, tta_scale)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"sweep": surface_dice_sweep(prob, open_labels(held / "labels")).tolist(),
                                             "hist": level_histogram(prob).tolist()}))
            d = json.loads(cache.read_text())
            self._heldout[tta_scale] = np.array(d["sweep"]), np.array(d["hist"])
        return self._heldout[tta_scale]

    def run(self, kidney: str, lever: str) -> dict:
        """Predict (unless by_fraction) and score one shifted kidney with one lever."""
        from nnunet_vasculature.io.volumes import open_labels
        from nnunet_vasculature.metrics.hosts import METRICS, kidney_scores
        from nnunet_vasculature.metrics.surface_dice import surface_dice_sweep
        from nnunet_vasculature.postprocess.morphology import level_for_fraction, level_histogram
        from nnunet_vasculature.postprocess.tune import LEVEL_HALF, best_fraction
        voxel, acquisition = KIDNEYS[kidney]
        tta = self.a.tta_scale if lever == "tta_scale" else 1.0
        spacing = TRAIN_UM if lever == "spacing_ignored" else voxel
        store_lever = "spacing_given" if lever == "by_fraction" else lever
        prob, seconds = self._predict(self.a.work / "kaggle" / "test" / kidney,
                                      self.a.work / "probs" / f"{self.tag}_{store_lever}.zarr", kidney, tta, spacing)
        truth = open_labels(self.a.work / "test_labels" / kidney / "labels")
        sweep = surface_dice_sweep(prob, truth)
        held_sweep, held_hist = self.heldout(tta)
        level = int(np.argmax(held_sweep))
        record = {"variant": self.a.variant, "seed": self.seed, "model": str(self.folder), "kidney": kidney,
                  "voxel_um": voxel, "acquisition": acquisition, "lever": lever, "spacing_um_given": spacing,
                  "tta_scale": tta, "heldout_best": float(held_sweep.max())}
        if lever == "by_fraction":
            fraction, _, _ = best_fraction([held_sweep], [held_hist])
            level = level_for_fraction(level_histogram(prob), fraction)
            record["vessel_fraction"] = fraction
        record.update({"level": level, "at_0.5": float(sweep[LEVEL_HALF]), "at_tuned": float(sweep[level]),
                       "own_best_level": int(np.argmax(sweep)), "at_own_best": float(sweep.max()),
                       "predict_seconds": seconds})
        if lever == METRICS_LEVER and not self.a.no_metrics:
            scores = kidney_scores(np.asarray(prob[:]) >= level, np.asarray(truth[:]), METRICS, where=kidney)
            record["metrics_at_tuned"] = {k: (None if np.isnan(v) else float(v)) for k, v in scores.items()}
        return record


def planned(a: argparse.Namespace, done: set) -> list[tuple[str, Path, str, str]]:
    """(seed label, model folder, kidney, lever) still to run, seed-major (a cut-short run has whole seeds)."""
    models = {lever: list(zip(a.seeds, a.models)) for lever in a.levers}
    for name, *dirs in a.lever_models or []:
        models[name] = list(zip(a.seeds, map(Path, dirs)))
    out = []
    for i, seed in enumerate(a.seeds):
        for kidney in a.kidneys:
            for lever, pairs in models.items():
                if lever == "spacing_ignored" and KIDNEYS[kidney][0] == TRAIN_UM:
                    continue    # read as 50 µm is what it is: spacing_given
                if (a.variant, seed, kidney, lever) not in done:
                    out.append((seed, pairs[i][1], kidney, lever))
    return out


def report(runs: list[dict]) -> str:
    """Mean ± sd over seeds per (variant, kidney, lever), each lever minus spacing_given paired by seed, transfer
    minus each other variant (e.g. scratch) on the same kidney and lever paired by seed, and the hosts' five metrics
    of spacing_given."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["kidney"], r["lever"]), []).append(r)
    kidney_order = {k: i for i, k in enumerate(KIDNEYS)}
    keys = sorted(groups, key=lambda g: (g[0], kidney_order.get(g[1], 99), (LEVERS + (g[2],)).index(g[2]), g[2]))
    rows, metric_rows = [], []
    for variant, kidney, lever in keys:
        rs = sorted(groups[(variant, kidney, lever)], key=lambda r: str(r["seed"]))
        base = {r["seed"]: r for r in groups.get((variant, kidney, "spacing_given"), [])}
        pairs = [(r["at_tuned"], base[r["seed"]]["at_tuned"]) for r in rs if r["seed"] in base]
        diff = paired(*map(list, zip(*pairs))) if pairs and lever != "spacing_given" else ""
        rows.append([variant, kidney, lever, ",".join(str(r["seed"]) for r in rs),
                     *(mean_sd([r[k] for r in rs]) for k in ("at_0.5", "at_tuned", "at_own_best")),
                     mean_sd([r["at_own_best"] - r["at_tuned"] for r in rs]), diff])
        with_metrics = [r for r in rs if "metrics_at_tuned" in r]
        if with_metrics:
            names = list(with_metrics[0]["metrics_at_tuned"])
            metric_rows.append([variant, kidney, lever, ",".join(str(r["seed"]) for r in with_metrics),
                                *(mean_sd([np.nan if r["metrics_at_tuned"][m] is None else r["metrics_at_tuned"][m]
                                           for r in with_metrics]) for m in names)])
    out = ("surface Dice (tolerance 0), mean ± sd [min–max] over seeds; tuned = the level tuned on the held-out "
           f"{HELD_OUT} (50 µm); own best = the shifted kidney's best level; CPU\n" +
           table(rows, ["variant", "kidney", "lever", "seeds", "@0.5", "@held-out tuned", "@own best",
                        "own best - tuned", "lever - spacing_given @tuned (paired)"]))
    variant_rows = []
    for other, kidney, lever in keys:          # e.g. transfer - scratch: the same kidney and lever, paired by seed
        if other == "transfer" or ("transfer", kidney, lever) not in groups:
            continue
        mine = {r["seed"]: r for r in groups[("transfer", kidney, lever)]}
        pairs = [(mine[r["seed"]], r) for r in groups[(other, kidney, lever)] if r["seed"] in mine]
        if pairs:
            variant_rows.append([f"transfer - {other}", kidney, lever, ",".join(str(a["seed"]) for a, _ in pairs),
                                 *(paired([a[k] for a, _ in pairs], [b[k] for _, b in pairs])
                                   for k in ("at_0.5", "at_tuned", "at_own_best"))])
    if variant_rows:
        out += "\n\nvariants compared on the same kidney and lever, paired by seed\n" + \
            table(variant_rows, ["difference", "kidney", "lever", "seeds", "@0.5", "@held-out tuned", "@own best"])
    if metric_rows:
        out += "\n\nthe hosts' five metrics at the held-out tuned threshold\n" + \
            table(metric_rows, ["variant", "kidney", "lever", "seeds", "nsd0", "nsd1", "cldice", "assd", "dice"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("demo-output"))
    ap.add_argument("--work", type=Path, default=Path("bench-shift"))
    ap.add_argument("--models", type=Path, nargs="+", default=[], metavar="DIR",
                    help="nnU-Net model folders (with fold_0), one per --seeds label")
    ap.add_argument("--seeds", nargs="+", default=[], help="a label per --models folder (e.g. the training seeds)")
    ap.add_argument("--variant", default="transfer", help="what the models are (a key of runs.jsonl and the table)")
    ap.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS))
    ap.add_argument("--lever_models", nargs="+", action="append", metavar=("NAME", "DIR"),
                    help="NAME DIR ...: a model-side lever (e.g. percentile_norm), one folder per --seeds label")
    ap.add_argument("--kidneys", nargs="+", choices=list(KIDNEYS), default=list(KIDNEYS))
    ap.add_argument("--tta_scale", type=float, default=1.5, help="the tta_scale lever's factor (default 1.5)")
    ap.add_argument("--synth_seed", type=int, default=0, help="synthesize's seed (the demo's: 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no_metrics", action="store_true", help="skip the hosts' five metrics")
    ap.add_argument("--dry_run", action="store_true", help="list the runs still to do; nothing predicted or written")
    ap.add_argument("--report", action="store_true", help="print the table of the runs done so far")
    a = ap.parse_args()
    a.demo, a.work = a.demo.resolve(), a.work.resolve()
    runs_file = a.work / "runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.is_file() else []
    if not a.report:
        if len(a.models) != len(a.seeds) or not a.models:
            sys.exit(f"--models ({len(a.models)}) and --seeds ({len(a.seeds)}): give one label per model folder")
        for name, *dirs in a.lever_models or []:
            if len(dirs) != len(a.seeds) or name in LEVERS:
                sys.exit(f"--lever_models {name}: a new lever name and one folder per --seeds label ({len(a.seeds)})")
        folders = [*a.models, *(Path(d) for _, *dirs in a.lever_models or [] for d in dirs)]
        for folder in folders:
            if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
                sys.exit(f"{folder}: no fold_0/checkpoint_final.pth (a trained nnU-Net model folder?)")
        if not (a.demo / "summary.json").is_file():
            sys.exit(f"{a.demo}/summary.json not found: run `make demo` (or --demo DIR) first")
        todo = planned(a, {(r["variant"], r["seed"], r["kidney"], r["lever"]) for r in runs})
        for i, (seed, folder, kidney, lever) in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {a.variant} seed {seed} {kidney} ({KIDNEYS[kidney][0]:g} µm, "
                  f"{KIDNEYS[kidney][1]}) {lever}: {folder}", flush=True)
        if a.dry_run:
            print(f"{len(todo)} runs to do ({len(runs)} already in {runs_file})")
            return
        from nnunet_vasculature.trainers import ext_trainer_value
        os.environ.update(nnUNet_raw=str(a.demo / "nnUNet_raw"), nnUNet_extTrainer=ext_trainer_value(),
                          nnUNet_preprocessed=str(a.demo / "nnUNet_preprocessed"))
        a.work.mkdir(parents=True, exist_ok=True)
        prepare(a.work, a.demo, a.synth_seed)
        benches: dict[Path, Bench] = {}
        for i, (seed, folder, kidney, lever) in enumerate(todo):
            tag = f"{a.variant}_seed{seed}" + ("" if folder in a.models else f"_{lever}")   # model-side lever
            r = benches.setdefault(folder, Bench(a, seed, folder, tag)).run(kidney, lever)
            runs.append(r)
            with open(runs_file, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"   {i + 1}/{len(todo)}: {r['at_0.5']:.3f} @0.5, {r['at_tuned']:.3f} @held-out level {r['level']}, "
                  f"{r['at_own_best']:.3f} @own best {r['own_best_level']}", flush=True)
    print(report(runs))


if __name__ == "__main__":
    main()
