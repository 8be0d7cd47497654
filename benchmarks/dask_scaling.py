"""`predict` on 1 vs 2 local dask workers (tiny network, CPU, one torch thread per worker): wall time,
speedup, peak RSS per worker, and whether the stores equal single-process `predict` byte for byte.

    .venv/bin/python -m benchmarks dask_scaling [--shape 64 96 96] [--slab_planes 16] [--workers 1 2]

Prints a markdown table and appends it to the run records (`python -m benchmarks --table dask_scaling`). Worker
start-up and model loading are left out of the times (each cluster is warmed up first); the scan of the volume
(one task per kidney) is included.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from benchmarks.common import peak_rss_kib, record
from nnunet_vasculature.demo.tiny_model import make_model_folder


def _warm():
    import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    import torch  # noqa: F401


def _peak_rss_mib():
    """This process's VmHWM (ru_maxrss would carry the parent's high-water mark into a spawned worker)."""
    return peak_rss_kib(os.getpid()) / 1024


def _volume(root, shape, seed=0):
    from scipy import ndimage as ndi
    rng = np.random.default_rng(seed)
    img = (ndi.gaussian_filter(rng.random(shape), 2) * 30000 + 1000).astype(np.uint16)
    d = root / "test" / "kidney_5" / "images"
    d.mkdir(parents=True)
    for z in range(shape[0]):
        tifffile.imwrite(d / f"{z:04d}.tif", img[z])
    return d.parent


def figures_of(shape, slab_planes: int, runs: list[tuple[str, float, list[float], bool]]) -> dict:
    """The figures of one run: the volume, the slab depth and a row per run, its speed-up against the one-worker
    run (none for the single process, or where no one-worker run was measured).

    Args:
        shape: the volume's (z, y, x).
        slab_planes: planes per slab.
        runs: (name, wall seconds, peak RSS MiB of each process, output equal to single-process ``predict``) per
            run; a dask run's name starts with its number of workers and contains "worker".

    Returns:
        ``{"volume": [z, y, x], "slab_planes": n, "rows": [...]}``, as recorded.
    """
    base = next((wall for name, wall, _, _ in runs if name.startswith("1 worker")), None)
    rows = [{"run": name, "wall (s)": wall,
             "speedup vs 1 worker": base / wall if base and "worker" in name else None,
             "peak RSS per process (MiB)": [round(r) for r in rss], "equal to 1 process": bool(same)}
            for name, wall, rss, same in runs]
    return {"volume": list(shape), "slab_planes": slab_planes, "rows": rows}


def markdown(figures: dict) -> str:
    """The table this benchmark prints, from :func:`figures_of`'s figures.

    Args:
        figures: as :func:`figures_of` returns them.

    Returns:
        The heading line and the markdown table.
    """
    lines = [f"\nvolume {tuple(figures['volume'])}, slabs of {figures['slab_planes']} planes, tiny network, CPU\n",
             "| run | wall (s) | speedup vs 1 worker | peak RSS per process (MiB) | equal to 1 process |",
             "|---|---|---|---|---|"]
    for row in figures["rows"]:
        speedup = "-" if row["speedup vs 1 worker"] is None else f"{row['speedup vs 1 worker']:.2f}x"
        lines.append(f"| {row['run']} | {row['wall (s)']:.1f} | {speedup} | "
                     f"{', '.join(str(r) for r in row['peak RSS per process (MiB)'])} | "
                     f"{'yes' if row['equal to 1 process'] else 'NO'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 96, 96])
    ap.add_argument("--slab_planes", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    from nnunet_vasculature.inference.distributed import _connect, predict_distributed
    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.predict import predict
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_model_folder(tmp / "model")
        kidney = _volume(tmp / "kaggle", tuple(a.shape))
        _warm()         # imports out of the timing, as for the workers
        t0 = time.time()
        options = PredictionOptions.of(folder, [0], tta=False)
        predict(kidney, tmp / "one.zarr", options, "cpu")
        rows = [("1 process (`predict`)", time.time() - t0, [_peak_rss_mib()], True)]
        ref = zarr.open_group(str(tmp / "one.zarr"), mode="r")["kidney_5"][:]
        for n in a.workers:
            client, cluster = _connect(n, None, None, "cpu")
            client.run(_warm)
            out = tmp / f"w{n}.zarr"
            t0 = time.time()
            predict_distributed(kidney, out, options, "cpu", torch_threads=1,
                                scheduler_address=cluster.scheduler_address, slab_planes=a.slab_planes)
            wall = time.time() - t0
            rss = sorted(client.run(_peak_rss_mib).values())
            client.close()
            cluster.close()
            same = np.array_equal(zarr.open_group(str(out), mode="r")["kidney_5"][:], ref)
            rows.append((f"{n} worker(s)", wall, rss, same))
    figures = figures_of(a.shape, a.slab_planes, rows)
    print(markdown(figures))
    record("dask_scaling", figures, a)


if __name__ == "__main__":
    main()
