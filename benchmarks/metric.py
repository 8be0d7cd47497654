"""Metric benchmark: our surface Dice vs PyPI surface-distance and vs junkoda's fast torch surface Dice (the one
SenNet's winning team kept), the 256-threshold sweep vs one threshold, and RLE encoding vs the plain numpy
run-length snippet, all measured in this run.

    .venv/bin/python -m benchmarks metric [--size 256] [--no-reference] [--junkoda FILE]

junkoda's code (the Kaggle notebook "fast-surface-dice-computation") is not shipped here: give a local copy with
``--junkoda FILE``, a module defining ``compute_surface_dice_score(pred, gt, device=None)`` on numpy arrays (the
notebook's ``compute_area`` and scoring loop, with the arrays passed in instead of read from CSVs); without it
those rows are left out.

Against junkoda's code both run on one CPU thread (``torch.set_num_threads(1)``; ours is single-threaded numpy)
on the same arrays; where torch has CUDA, junkoda's on the GPU is measured too (ours stays on one CPU thread).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from benchmarks.common import best_of, kaggle_rle, record, table_of
from nnunet_vasculature.io.rle import rle_encode
from nnunet_vasculature.metrics.surface_dice import surface_dice, surface_dice_sweep


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


def junkoda_rows(pred: np.ndarray, gt: np.ndarray, t_ours: float, n: int, path: str) -> list[dict]:
    """junkoda's torch surface Dice (the module at ``path``) on one CPU thread (and on the GPU where torch has
    CUDA) against ours."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location("junkoda_surface_dice", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compute_surface_dice_score = module.compute_surface_dice_score
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = surface_dice(pred, gt)
        theirs = compute_surface_dice_score(pred, gt)
        t_cpu = best_of(lambda: compute_surface_dice_score(pred, gt), 2)
    finally:
        torch.set_num_threads(threads)
    rows = [{"what": f"surface Dice, one threshold, {n}^3 vessel trees", "ours (s)": t_ours,
             "reference": "junkoda torch, CPU, 1 thread", "reference (s)": t_cpu, "reference / ours": t_cpu / t_ours,
             "note": f"|diff| {abs(ours - theirs):.1e}; target >= 10x"}]
    if torch.cuda.is_available():
        device = torch.device("cuda")

        def on_gpu():
            value = compute_surface_dice_score(pred, gt, device)
            torch.cuda.synchronize()
            return value
        on_gpu()                                   # warm-up: CUDA context and kernels
        t_gpu = best_of(on_gpu, 3)
        rows.append({"what": f"surface Dice, one threshold, {n}^3 vessel trees", "ours (s)": t_ours,
                     "reference": f"junkoda torch, {torch.cuda.get_device_name()}", "reference (s)": t_gpu,
                     "reference / ours": t_gpu / t_ours,
                     "note": f"ours on one CPU thread; |diff| {abs(ours - on_gpu()):.1e}"})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-reference", action="store_true", help="skip surface-distance (36 s at 256^3)")
    ap.add_argument("--junkoda", metavar="FILE", help="a local copy of junkoda's fast surface Dice (see above)")
    a = ap.parse_args()
    n = a.size
    gt, prob = vessel_like(n)
    pred = prob >= 128
    rows = []
    t_ours = best_of(lambda: surface_dice(pred, gt), 5)
    if a.junkoda:
        rows += junkoda_rows(pred, gt, t_ours, n, a.junkoda)
    if not a.no_reference:
        import surface_distance as sd
        if "Inf" not in np.__dict__:
            np.Inf = np.inf
        t = time.perf_counter()
        ref = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, (1, 1, 1)), 0)
        t_ref = time.perf_counter() - t
        rows.append({"what": f"surface Dice, one threshold, {n}^3 vessel trees", "ours (s)": t_ours,
                     "reference": "surface-distance", "reference (s)": t_ref, "reference / ours": t_ref / t_ours,
                     "note": f"|diff| {abs(surface_dice(pred, gt) - ref):.1e}"})
        rng = np.random.default_rng(3)      # dense random masks: the reference's distance transforms dominate
        ra, rb = rng.random((n, n, n)) > 0.5, rng.random((n, n, n)) > 0.5
        t_rand = best_of(lambda: surface_dice(rb, ra))
        t = time.perf_counter()
        ref = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(ra, rb, (1, 1, 1)), 0)
        t_ref = time.perf_counter() - t
        rows.append({"what": f"surface Dice, one threshold, {n}^3 random 50 %", "ours (s)": t_rand,
                     "reference": "surface-distance", "reference (s)": t_ref, "reference / ours": t_ref / t_rand,
                     "note": f"|diff| {abs(surface_dice(rb, ra) - ref):.1e}"})
    t_sweep = best_of(lambda: surface_dice_sweep(prob, gt), 2)
    rows.append({"what": f"sweep of 256 thresholds, {n}^3", "ours (s)": t_sweep, "reference": "ours, one threshold",
                 "reference (s)": t_ours, "reference / ours": t_ours / t_sweep,
                 "note": f"256 single thresholds: {256 * t_ours:.1f} s, {256 * t_ours / t_sweep:.0f}x the sweep"})
    noise = np.random.default_rng(2).integers(0, 256, gt.shape, dtype=np.uint8)
    t_noise = best_of(lambda: surface_dice_sweep(noise, gt), 1)
    rows.append({"what": f"sweep, worst case: uniform noise {n}^3", "ours (s)": t_noise,
                 "reference": "ours, one threshold", "reference (s)": t_ours, "reference / ours": t_ours / t_noise,
                 "note": "every cube changes code at 8 levels"})
    for label, cut in (("sparse blobs (~3 %)", 0.56), ("dense blobs (~30 %)", 0.53)):
        rng = np.random.default_rng(1)
        fields = [ndi.gaussian_filter(rng.random((1303, 912)).astype(np.float32), 4) for _ in range(10)]
        u8 = [(f > cut).astype(np.uint8) for f in fields]
        assert all(rle_encode(s) == kaggle_rle(s) for s in u8)
        t_enc = best_of(lambda: [rle_encode(s) for s in u8], 20)
        t_plain = best_of(lambda: [kaggle_rle(s) for s in u8], 20)
        runs = np.mean([len(rle_encode(s).split()) // 2 for s in u8])
        rows.append({"what": f"RLE encode, 10 slices 1303x912, {label}", "ours (s)": t_enc,
                     "reference": "numpy snippet", "reference (s)": t_plain, "reference / ours": t_plain / t_enc,
                     "note": f"{runs:.0f} runs/slice; target >= 3x"})
    figures = {"foreground_percent": float(gt.mean() * 100),
               "probabilities_above_0_percent": float((prob > 0).mean() * 100), "rows": rows}
    print(f"foreground {figures['foreground_percent']:.2f} %, "
          f"probabilities > 0: {figures['probabilities_above_0_percent']:.1f} %")
    print(table_of(rows))
    record("metric", figures, a)

if __name__ == "__main__":
    main()
