"""`predict` on 1 vs 2 local dask workers (tiny network, CPU, one torch thread per worker): wall time,
speedup, peak RSS per worker, and whether the stores equal single-process `predict` byte for byte.

    .venv/bin/python -m benchmarks dask_scaling [--shape 64 96 96] [--slab_planes 16] [--workers 1 2]

Prints a markdown table. Worker start-up and model loading are left out of the times (each cluster is
warmed up first); the scan of the volume (one task per kidney) is included.
"""
import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from nnunet_vasculature.demo.tiny_model import make_model_folder


def _warm():
    import nnunetv2.inference.predict_from_raw_data  # noqa: F401
    import torch  # noqa: F401


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _volume(root, shape, seed=0):
    from scipy import ndimage as ndi
    rng = np.random.default_rng(seed)
    img = (ndi.gaussian_filter(rng.random(shape), 2) * 30000 + 1000).astype(np.uint16)
    d = root / "test" / "kidney_5" / "images"
    d.mkdir(parents=True)
    for z in range(shape[0]):
        tifffile.imwrite(d / f"{z:04d}.tif", img[z])
    return d.parent


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
        rows = [("1 process (`predict`)", time.time() - t0, None, [_peak_rss_mib()], True)]
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
            rows.append((f"{n} worker(s)", wall, None, rss, same))
    base = next(r[1] for r in rows if r[0].startswith("1 worker")) if 1 in a.workers else None
    print(f"\nvolume {tuple(a.shape)}, slabs of {a.slab_planes} planes, tiny network, CPU\n")
    print("| run | wall (s) | speedup vs 1 worker | peak RSS per process (MiB) | equal to 1 process |")
    print("|---|---|---|---|---|")
    for name, wall, _, rss, same in rows:
        sp = f"{base / wall:.2f}x" if base and "worker" in name else "-"
        print(f"| {name} | {wall:.1f} | {sp} | {', '.join(f'{r:.0f}' for r in rss)} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
