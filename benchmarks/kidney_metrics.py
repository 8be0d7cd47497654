"""The hosts' five per-kidney metrics: ours (streamed, ``metrics.hosts.kidney_scores``) vs the hosts' whole-volume
logic (surface-distance for NSD@0/1, scikit-image Lee skeletons for clDice, MONAI ASSD and Dice), each in a fresh
process with its own peak RSS, both measured in this run on the same synthetic vessel pair (memory-mapped .npy).

    .venv/bin/python -m benchmarks kidney_metrics [--shape 160 256 256] [--no-reference]

``--workers 1 2`` scores the same pair once per worker count (threads of one process, ``kidney_scores(...,
workers=N)``), the first count (1: today's plain loop) printed as the reference, with wall and CPU seconds, and checks
that every count gives the same values. ``--planes Z0 Z1`` keeps planes Z0..Z1 of the ``--shape`` kidney (same tree,
same noise as the whole one), so a piece of a whole kidney, with its thick vessels, can be timed in minutes:

    .venv/bin/python -m benchmarks kidney_metrics --shape 2279 1303 912 --planes 1024 1280 --workers 1 2 --no-reference

``--csv DIR`` scores through the command line instead, as a user scores a Kaggle kidney: the pair is generated slab
by slab (never whole in memory) into ``DIR/Z_H_W/solution.csv`` and ``submission.csv`` (RLE by Kaggle's own encoder
snippet, not ours), then ``score sennet --solution … --submission … --metrics nsd0 nsd1 cldice assd dice --json``
runs in a fresh process. Files already in DIR are reused, so a second run scores only. The whole 2279 x 1303 x 912
kidney: ``--shape 2279 1303 912 --no-reference --csv /tmp/full_kidney``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import kaggle_rle, record, run_child, table

OURS = """
import sys, time
import numpy as np
from nnunet_vasculature.metrics.hosts import kidney_scores
pred, gt = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2], mmap_mode="r")
workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
t, cpu = time.perf_counter(), time.process_time()
s = kidney_scores(pred, gt, ["nsd0", "nsd1", "cldice", "assd", "dice"], workers=workers)
report(seconds=time.perf_counter() - t, cpu_seconds=time.process_time() - cpu, **s)
"""

HOSTS = """
import sys, time
import numpy as np
if "Inf" not in np.__dict__:
    np.Inf = np.inf
import surface_distance, torch
from monai.metrics import compute_average_surface_distance, compute_dice
from skimage.morphology import skeletonize
pred, gt = np.load(sys.argv[1]), np.load(sys.argv[2])
t = time.perf_counter()
d = surface_distance.compute_surface_distances(gt, pred, (1, 1, 1))
s = {"nsd0": float(surface_distance.compute_surface_dice_at_tolerance(d, 0)),
     "nsd1": float(surface_distance.compute_surface_dice_at_tolerance(d, 1))}
del d
sk_g, sk_p = skeletonize(gt, method="lee") > 0, skeletonize(pred, method="lee") > 0
tprec, tsens = np.sum(pred * sk_g) / np.sum(sk_g), np.sum(gt * sk_p) / np.sum(sk_p)
s["cldice"] = float(2 * tprec * tsens / (tprec + tsens))
del sk_g, sk_p
p, g = torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None]
s["assd"] = float(compute_average_surface_distance(p, g, spacing=1, symmetric=True).item())
s["dice"] = float(compute_dice(p, g).item())
report(seconds=time.perf_counter() - t, **s)
"""


CLI = """
import json, sys, time
from nnunet_vasculature.cli import main
t, cpu0 = time.perf_counter(), time.process_time()
rc = main(["score", "sennet", "--solution", sys.argv[1], "--submission", sys.argv[2], "--metrics", "nsd0", "nsd1",
           "cldice", "assd", "dice", "--json", sys.argv[3], "--workers", sys.argv[4]])
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu0
assert rc == 0, rc
report(seconds=seconds, cpu_seconds=cpu, **json.load(open(sys.argv[3]))["mean"])
"""


def vessel_pair_slabs(shape: tuple[int, int, int], seed: int = 0, slab: int | None = None,
                      planes: tuple[int, int] | None = None):
    """Labels: the synthesizer's vessel tree; prediction: the same tree thresholded from a noisy distance, so it
    is shifted, thinner/thicker in places, and has scattered false positives. Yields (pred, gt) z-slabs of
    ``slab`` planes (all at once when None); the noise is drawn in z order from one generator, so any slab size
    gives the same volumes. ``planes=(z0, z1)``: only planes z0..z1 (z0 a multiple of ``slab``), equal to those
    planes of the whole pair (the noise of the planes before is drawn and dropped)."""
    from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field
    rng = np.random.default_rng(seed)
    tree = grow_tree(rng, np.array(shape, float), root_radius=min(shape) / 40, min_radius=1.0, n_roots=12,
                     missing_fraction=0.0)
    first, stop = planes or (0, shape[0])
    slab = slab or (shape[0] if planes is None else 32)
    for z0 in range(0, stop, slab):
        block = (min(slab, stop - z0), *shape[1:])
        if z0 < first:
            rng.normal(0, 0.6, block)
            continue
        sd = segment_field(np.array([z0, 0.0, 0.0]), block, 1.0, tree, False, 3.0)
        yield (sd + rng.normal(0, 0.6, sd.shape)) <= 0.3, sd <= 0


def vessel_pair(shape: tuple[int, int, int], seed: int = 0,
                planes: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    if planes is None:
        return next(vessel_pair_slabs(shape, seed))
    pred, gt = zip(*vessel_pair_slabs(shape, seed, 32, planes))
    return np.concatenate(pred), np.concatenate(gt)


def foreground_voxels(path: Path) -> int:
    """Sum of the run lengths of a CSV's ``rle`` column."""
    import csv
    csv.field_size_limit(2**31 - 1)
    with open(path, newline="") as f:
        return sum(sum(map(int, r["rle"].split()[1::2])) for r in csv.DictReader(f))


def write_csv_pair(shape: tuple[int, int, int], folder: Path, kidney: str = "kidney_full") -> list[str]:
    """``solution.csv`` (id,rle,width,height,usage) and ``submission.csv`` (id,rle) of one synthetic kidney,
    written slab by slab into ``folder/Z_H_W``; kept when both already exist there."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from nnunet_vasculature.errors import atomic_file
    folder = folder / "_".join(map(str, shape))
    sol, sub = folder / "solution.csv", folder / "submission.csv"
    if not (sol.exists() and sub.exists()):
        with ExitStack() as stack:
            fs = stack.enter_context(open(stack.enter_context(atomic_file(sol)), "w"))
            fp = stack.enter_context(open(stack.enter_context(atomic_file(sub)), "w"))
            fs.write("id,rle,width,height,usage\n")
            fp.write("id,rle\n")
            z = 0
            for pred, gt in tqdm(vessel_pair_slabs(shape, slab=32), total=-(-shape[0] // 32), desc="writing CSVs"):
                for p, g in zip(pred, gt):
                    label, prediction = (kaggle_rle(m.astype(np.uint8)) or "1 0" for m in (g, p))
                    fs.write(f"{kidney}_{z:04d},{label},{shape[2]},{shape[1]},Public\n")
                    fp.write(f"{kidney}_{z:04d},{prediction}\n")
                    z += 1
    share = [foreground_voxels(f) / np.prod(shape) for f in (sol, sub)]
    print(f"volume {shape} = {np.prod(shape) / 1e6:.1f} M voxels; solution.csv {sol.stat().st_size / 2**20:.0f} MiB "
          f"({share[0]:.2%} foreground), submission.csv {sub.stat().st_size / 2**20:.0f} MiB ({share[1]:.2%})")
    return [str(sol), str(sub), str(folder / "scores.json")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[160, 256, 256], metavar=("Z", "H", "W"))
    ap.add_argument("--no-reference", action="store_true", help="only ours (for volumes the reference cannot run)")
    ap.add_argument("--csv", type=Path, metavar="DIR", help="score Kaggle-layout CSVs written to DIR through the CLI")
    ap.add_argument("--planes", type=int, nargs=2, metavar=("Z0", "Z1"),
                    help="only planes Z0..Z1 (Z0 a multiple of 32) of the --shape kidney")
    ap.add_argument("--workers", type=int, nargs="+", metavar="N",
                    help="score with each of these worker counts (the first is the reference)")
    a = ap.parse_args()
    shape = tuple(a.shape)
    if a.planes and (a.planes[0] % 32 or not 0 <= a.planes[0] < a.planes[1] <= shape[0]):
        ap.error(f"--planes {a.planes[0]} {a.planes[1]}: need 0 <= Z0 < Z1 <= {shape[0]}, Z0 a multiple of 32")
    metrics = ["nsd0", "nsd1", "cldice", "assd", "dice"]
    if a.csv:
        pair = write_csv_pair(shape, a.csv)
        runs = {n: run_child(CLI, *pair, str(n)) for n in a.workers or [1]}
        print(table([[f"score sennet --workers {n} (CLI, CSVs)", f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
                      f"{r['peak_rss_mib']:.0f}"] + [f"{r[m]:.6f}" for m in metrics] for n, r in runs.items()],
                    ["run", "seconds", "CPU seconds", "peak RSS MiB", *metrics]))
        record("kidney_metrics", {"shape": list(shape), "rows": [{"run": f"score sennet --workers {n} (CLI, CSVs)",
                                                                   **r} for n, r in runs.items()]}, a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        pred, gt = vessel_pair(shape, planes=tuple(a.planes) if a.planes else None)
        if a.planes:
            shape = pred.shape
        paths = [str(Path(tmp) / "pred.npy"), str(Path(tmp) / "gt.npy")]
        np.save(paths[0], pred)
        np.save(paths[1], gt)
        print(f"volume {shape} = {np.prod(shape) / 1e6:.1f} M voxels; foreground {gt.mean():.2%} (labels), "
              f"{pred.mean():.2%} (prediction)")
        del pred, gt
        if a.workers:
            runs = {}
            for n in a.workers:
                runs[n] = run_child(OURS, *paths, str(n))
                runs[n]["load"] = os.getloadavg()[0]       # the machine is shared: its 1-minute load after the run
            print_workers(runs, metrics)
            record("kidney_metrics", {"shape": list(shape), "rows": [{"run": f"workers={n}", **r}
                                                                       for n, r in runs.items()]}, a)
            return
        runs = {"ours (streamed)": run_child(OURS, *paths)}
        if not a.no_reference:
            runs["hosts' logic (whole volume)"] = run_child(HOSTS, *paths)
    rows = [[name, f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:.0f}"] + [f"{r[m]:.6f}" for m in metrics]
            for name, r in runs.items()]
    print(table(rows, ["run", "seconds", "peak RSS MiB", *metrics]))
    record("kidney_metrics", {"shape": list(shape), "rows": [{"run": name, **r} for name, r in runs.items()]}, a)


def print_workers(runs: dict[int, dict], metrics: list[str]) -> None:
    """The worker counts' table, each against the first (the reference), and the largest difference of any value
    from the reference's (0 expected: the slabs' sums are reduced in one order whatever ran them)."""
    ref = runs[next(iter(runs))]
    rows = [[f"workers={n}" + (" (reference)" if r is ref else ""), f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
             f"{ref['seconds'] / r['seconds']:.2f}x", f"{r['peak_rss_mib']:.0f}", f"{r['load']:.1f}"]
            + [f"{r[m]:.9f}" for m in metrics] for n, r in runs.items()]
    print(table(rows, ["run", "seconds", "CPU seconds", "speed-up", "peak RSS MiB", "load", *metrics]))
    diff = max(abs(r[m] - ref[m]) for r in runs.values() for m in metrics)
    print(f"largest difference from the reference's values: {diff:.3g}")


if __name__ == "__main__":
    main()
