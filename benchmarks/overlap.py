"""Overlapped vs serial streaming prediction on one CPU, and stock nnUNetPredictor on the same volume.

A Kaggle-layout folder of uint16 TIFF slices at 63.08 µm (kidney_6-like) is predicted by a small network
trained at 50 µm (so the input is resampled up and the probabilities back down) into a zarr store, by
``StreamingPredictor(overlap=True)`` and ``overlap=False`` (everything in the calling thread, in order),
and by stock ``nnUNetPredictor.predict_single_npy_array`` on the volume loaded from the same slices
(loading included). Stage times are those of the same run: read+prepare (input thread busy), network
(sum of the forward passes), main (calling thread busy: network, accumulation, division), write
(back-resampling, softmax, zarr; writer thread busy); the scan (one pass over the slices for the crop
box and intensity statistics) comes before the rows and is reported apart.

    nice -n 10 .venv/bin/python -m benchmarks overlap [--depth 64] [--plane 256] [--threads 1]
        [--features 2 4 8] [--step 1.0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import record, table


def make_slices(folder: Path, depth: int, plane: int) -> Path:
    """Smooth random volume with a zero border, written slice by slice as uint16 TIFF."""
    import tifffile
    from scipy import ndimage as ndi
    images = folder / "kidney_6" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for z in range(depth):
        p = ndi.gaussian_filter(rng.random((plane, plane)), 3) * 40000 + 2000
        p[:, : plane // 16] = 0
        tifffile.imwrite(images / f"{z:04d}.tif", p.astype(np.uint16))
    return images.parent


def run_ours(folder: Path, kidney: Path, out: Path, overlap: bool, step: float) -> dict:
    import torch
    import zarr

    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.streaming import StreamingPredictor
    from nnunet_vasculature.io.sennet_inputs import kaggle_kidney
    from nnunet_vasculature.io.store import KidneyWriter
    src = kaggle_kidney(kidney, 63.08)
    pred = StreamingPredictor(PredictionOptions.of(folder, [0], tta=False, step_size=step),
                                           torch.device("cpu"), overlap=overlap)
    group = zarr.open_group(str(out), mode="w")
    sink = KidneyWriter(group, src.name, src.shape, src.spacing, src.slice_ids, {"tool": "benchmark"})
    t = time.perf_counter()
    pred.predict(src, sink)
    sink.close()
    total = time.perf_counter() - t
    return {**pred.timings, "total": total, "result": group[src.name][:]}


def run_stock(folder: Path, kidney: Path, step: float) -> dict:
    import tifffile
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    p = nnUNetPredictor(tile_step_size=step, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), [0])
    t = time.perf_counter()
    files = sorted((kidney / "images").glob("*.tif"))
    img = np.stack([tifffile.imread(f) for f in files]).astype(np.float32)
    load = time.perf_counter() - t
    _, probs = p.predict_single_npy_array(img[None], {"spacing": [63.08] * 3}, None, None, True)
    return {"total": time.perf_counter() - t, "load": load, "result": np.rint(probs[1] * 255).astype(np.uint8)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--plane", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: on 2 cores the "
                                                           "input and writer threads take the other)")
    ap.add_argument("--features", type=int, nargs=3, default=[2, 4, 8], help="features per stage")
    ap.add_argument("--step", type=float, default=1.0, help="tile step (fraction of the patch)")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from nnunet_vasculature.demo.tiny_model import make_model_folder
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_model_folder(tmp / "model", spacing=(50.0, 50.0, 50.0), patch=(32, 64, 64),
                                   features=tuple(a.features))
        kidney = make_slices(tmp / "kaggle", a.depth, a.plane)
        run_ours(folder, kidney, tmp / "warm.zarr", True, a.step)       # imports, page cache
        serial = run_ours(folder, kidney, tmp / "serial.zarr", False, a.step)
        over = run_ours(folder, kidney, tmp / "over.zarr", True, a.step)
        stock = run_stock(folder, kidney, a.step)
    same = np.array_equal(serial["result"], over["result"])
    diff = np.abs(over["result"].astype(int) - stock["result"].astype(int))
    rows = []
    for name, r in (("overlapped", over), ("serial", serial)):
        slowest = max(r["prepare"], r["main"], r["write"])
        rows.append([name, f"{r['total']:.1f}", f"{r['scan']:.1f}", f"{r['wall']:.1f}", f"{r['prepare']:.1f}",
                     f"{r['network']:.1f}", f"{r['main']:.1f}", f"{r['write']:.1f}",
                     f"{r['wall'] / r['network']:.2f}", f"{r['wall'] / slowest:.2f}",
                     f"{r['total'] / stock['total']:.2f}"])
    rows.append(["stock nnUNetPredictor", f"{stock['total']:.1f}", f"load {stock['load']:.1f}", "", "", "", "", "",
                 "", "", "1.00"])
    print(f"volume {a.depth}x{a.plane}x{a.plane} uint16 TIFF slices at 63.08 um -> model 50 um, patch 32x64x64, "
          f"features {a.features}, step {a.step}, no TTA, torch threads {a.threads}, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(table(rows, ["run", "total s", "scan s", "rows wall s", "read+prepare s", "network s", "main s",
                       "write s", "rows wall/network", "rows wall/slowest stage", "total/stock"]))
    print(f"overlapped == serial bitwise: {same}; vs stock: max |uint8 diff| {diff.max()}, "
          f"{(diff > 0).mean() * 100:.2f}% of voxels differ")
    stages = ("scan", "wall", "prepare", "network", "main", "write")
    figures = {"cores": len(os.sched_getaffinity(0)),
               "rows": [{"run": name, "total (s)": r["total"], **{f"{k} (s)": r[k] for k in stages}}
                        for name, r in (("overlapped", over), ("serial", serial))]
               + [{"run": "stock nnUNetPredictor", "total (s)": stock["total"], "load (s)": stock["load"]}],
               "overlapped equals serial": bool(same), "max uint8 diff vs stock": int(diff.max()),
               "voxels differing from stock (%)": float((diff > 0).mean() * 100)}
    record("overlap", figures, a)


if __name__ == "__main__":
    main()
