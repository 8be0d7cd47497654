"""The hosts' five per-kidney metrics: ours (streamed, ``kidney_metrics.kidney_scores``) vs the hosts' whole-volume
logic (surface-distance for NSD@0/1, scikit-image Lee skeletons for clDice, MONAI ASSD and Dice), each in a fresh
process with its own peak RSS, both measured in this run on the same synthetic vessel pair (memory-mapped .npy).

    .venv/bin/python benchmarks/kidney_metrics.py [--shape 160 256 256] [--no-reference]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_child, table  # noqa: E402

OURS = """
import sys, time
import numpy as np
from nnunet_vasculature.postprocess.kidney_metrics import kidney_scores
pred, gt = np.load(sys.argv[1], mmap_mode="r"), np.load(sys.argv[2], mmap_mode="r")
t = time.perf_counter()
s = kidney_scores(pred, gt, ["nsd0", "nsd1", "cldice", "assd", "dice"])
report(seconds=time.perf_counter() - t, **s)
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


def vessel_pair(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels: the synthesizer's vessel tree; prediction: the same tree thresholded from a noisy blurred distance,
    so it is shifted, thinner/thicker in places, and has scattered false positives."""
    from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field
    rng = np.random.default_rng(seed)
    tree = grow_tree(rng, np.array(shape, float), root_radius=min(shape) / 40, min_radius=1.0, n_roots=12,
                     missing_fraction=0.0)
    sd = segment_field(np.zeros(3), shape, 1.0, tree, False, 3.0)
    gt = sd <= 0
    pred = (sd + rng.normal(0, 0.6, sd.shape)) <= 0.3
    return pred, gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[160, 256, 256], metavar=("Z", "H", "W"))
    ap.add_argument("--no-reference", action="store_true", help="only ours (for volumes the reference cannot run)")
    a = ap.parse_args()
    shape = tuple(a.shape)
    with tempfile.TemporaryDirectory() as tmp:
        pred, gt = vessel_pair(shape)
        paths = [str(Path(tmp) / "pred.npy"), str(Path(tmp) / "gt.npy")]
        np.save(paths[0], pred)
        np.save(paths[1], gt)
        print(f"volume {shape} = {np.prod(shape) / 1e6:.1f} M voxels; foreground {gt.mean():.2%} (labels), "
              f"{pred.mean():.2%} (prediction)")
        del pred, gt
        runs = {"ours (streamed)": run_child(OURS, *paths)}
        if not a.no_reference:
            runs["hosts' logic (whole volume)"] = run_child(HOSTS, *paths)
    metrics = ["nsd0", "nsd1", "cldice", "assd", "dice"]
    rows = [[name, f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:.0f}"] + [f"{r[m]:.6f}" for m in metrics]
            for name, r in runs.items()]
    print(table(rows, ["run", "seconds", "peak RSS MiB", *metrics]))


if __name__ == "__main__":
    main()
