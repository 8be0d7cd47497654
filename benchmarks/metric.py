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
from common import best_of, table  # noqa: E402

from nnunet_vasculature.postprocess.rle import rle_encode  # noqa: E402
from nnunet_vasculature.postprocess.surface_dice import surface_dice, surface_dice_sweep  # noqa: E402


def vessel_like(n: int, seed: int = 0):
    """A thin-structure mask (~1 % foreground) and a blurred, noisy probability map of it."""
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.random((n, n, n)).astype(np.float32), 3)
    gt = np.abs(f - 0.5) < 0.0015
    prob = ndi.gaussian_filter(gt.astype(np.float32), 1.0) * 2.2
    prob = np.clip(prob + rng.normal(0, 0.02, prob.shape), 0, 1)
    return gt, np.rint(prob * 255).astype(np.uint8)


def plain_rle(img):
    """The run-length snippet most Kaggle notebooks used."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


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
        rows.append([f"surface Dice, one threshold, {n}^3", f"{t_ours:.3f} s", f"surface-distance {t_ref:.1f} s",
                     f"{t_ref / t_ours:.0f}x faster", f"|diff| {abs(ours - ref):.1e}"])
    t_sweep = best_of(lambda: surface_dice_sweep(prob, gt), 2)
    rows.append([f"sweep of 256 thresholds, {n}^3", f"{t_sweep:.3f} s", f"ours, one threshold {t_ours:.3f} s",
                 f"{t_sweep / t_ours:.2f}x one threshold", "target <= 3x"])
    rng = np.random.default_rng(1)
    slices = [ndi.gaussian_filter(rng.random((1303, 912)).astype(np.float32), 4) > 0.53 for _ in range(10)]
    u8 = [s.astype(np.uint8) for s in slices]
    assert all(rle_encode(s) == plain_rle(s) for s in u8[:2])
    t_enc = best_of(lambda: [rle_encode(s) for s in u8])
    t_plain = best_of(lambda: [plain_rle(s) for s in u8])
    rows.append(["RLE encode, 10 slices 1303x912", f"{t_enc * 1000:.1f} ms", f"numpy snippet {t_plain * 1000:.1f} ms",
                 f"{t_plain / t_enc:.1f}x faster", "target >= 3x"])
    print(f"foreground {gt.mean() * 100:.2f} %, probabilities > 0: {(prob > 0).mean() * 100:.1f} %")
    print(table(rows, ["what", "ours", "reference (same run)", "ratio", "note"]))


if __name__ == "__main__":
    main()
