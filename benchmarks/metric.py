"""Metric benchmark: our surface Dice vs PyPI surface-distance, the 256-threshold sweep vs one
threshold, and RLE encoding vs the plain numpy run-length snippet, all measured in this run.

    .venv/bin/python benchmarks/metric.py [--size 256] [--no-reference]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, kaggle_rle, table  # noqa: E402

from nnunet_vasculature.io.rle import rle_encode  # noqa: E402
from nnunet_vasculature.postprocess.surface_dice import surface_dice, surface_dice_sweep  # noqa: E402


def vessel_like(n: int, seed: int = 0):
    """Vessel trees (the synthesizer's) and a probability map like a network's: blurred and noisy near
    the vessels, ~0 far from them."""
    from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field
    rng = np.random.default_rng(seed)
    extent = np.array([n, n, n], float)
    tree = grow_tree(rng, extent, root_radius=n / 40, min_radius=1.0, n_roots=12, missing_fraction=0.0)
    sd = segment_field(np.zeros(3), (n, n, n), 1.0, tree, False, 3.0)
    gt = sd <= 0
    prob = 1 / (1 + np.exp(np.clip(sd / 0.8, -30, 30)))
    prob = np.clip(prob * rng.uniform(0.6, 1.4, prob.shape), 0, 1)
    return gt, np.rint(prob * 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-reference", action="store_true", help="skip surface-distance (36 s at 256^3)")
    a = ap.parse_args()
    n = a.size
    gt, prob = vessel_like(n)
    pred = prob >= 128
    rows = []
    t_ours = best_of(lambda: surface_dice(pred, gt))
    if not a.no_reference:
        import surface_distance as sd
        if "Inf" not in np.__dict__:
            np.Inf = np.inf
        t = time.perf_counter()
        ref = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, (1, 1, 1)), 0)
        t_ref = time.perf_counter() - t
        ours = surface_dice(pred, gt)
        rows.append([f"surface Dice, one threshold, {n}^3 vessel trees", f"{t_ours:.3f} s",
                     f"surface-distance {t_ref:.1f} s", f"{t_ref / t_ours:.0f}x faster",
                     f"|diff| {abs(ours - ref):.1e}"])
        rng = np.random.default_rng(3)      # dense random masks: the reference's distance transforms dominate
        ra, rb = rng.random((n, n, n)) > 0.5, rng.random((n, n, n)) > 0.5
        t_rand = best_of(lambda: surface_dice(rb, ra))
        t = time.perf_counter()
        ref = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(ra, rb, (1, 1, 1)), 0)
        t_ref = time.perf_counter() - t
        rows.append([f"surface Dice, one threshold, {n}^3 random 50 %", f"{t_rand:.3f} s",
                     f"surface-distance {t_ref:.1f} s", f"{t_ref / t_rand:.0f}x faster",
                     f"|diff| {abs(surface_dice(rb, ra) - ref):.1e}"])
    t_sweep = best_of(lambda: surface_dice_sweep(prob, gt), 2)
    rows.append([f"sweep of 256 thresholds, {n}^3", f"{t_sweep:.3f} s", f"ours, one threshold {t_ours:.3f} s",
                 f"{t_sweep / t_ours:.2f}x one threshold", "target <= 3x"])
    noise = np.random.default_rng(2).integers(0, 256, gt.shape, dtype=np.uint8)
    t_noise = best_of(lambda: surface_dice_sweep(noise, gt), 1)
    rows.append([f"sweep, worst case: uniform noise {n}^3", f"{t_noise:.3f} s", f"ours, one threshold {t_ours:.3f} s",
                 f"{t_noise / t_ours:.1f}x one threshold", "every cube changes code at 8 levels"])
    for label, cut in (("sparse blobs (~3 %)", 0.56), ("dense blobs (~30 %)", 0.53)):
        rng = np.random.default_rng(1)
        fields = [ndi.gaussian_filter(rng.random((1303, 912)).astype(np.float32), 4) for _ in range(10)]
        u8 = [(f > cut).astype(np.uint8) for f in fields]
        assert all(rle_encode(s) == kaggle_rle(s) for s in u8)
        t_enc = best_of(lambda: [rle_encode(s) for s in u8], 20)
        t_plain = best_of(lambda: [kaggle_rle(s) for s in u8], 20)
        runs = np.mean([len(rle_encode(s).split()) // 2 for s in u8])
        rows.append([f"RLE encode, 10 slices 1303x912, {label}", f"{t_enc * 1000:.1f} ms",
                     f"numpy snippet {t_plain * 1000:.1f} ms", f"{t_plain / t_enc:.1f}x faster",
                     f"{runs:.0f} runs/slice; target >= 3x"])
    print(f"foreground {gt.mean() * 100:.2f} %, probabilities > 0: {(prob > 0).mean() * 100:.1f} %")
    print(table(rows, ["what", "ours", "reference (same run)", "ratio", "note"]))


if __name__ == "__main__":
    main()
