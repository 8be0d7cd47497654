"""Peak host memory of our streaming predictor vs stock nnUNetPredictor, on synthetic volumes of
growing depth (tiny network, CPU, no TTA). Each run is a fresh process; its own peak RSS is reported.

    .venv/bin/python -m benchmarks predict_memory [--depths 64 128 256 512] [--plane 256]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import record, run_child, table

SETUP = """
import sys, time, numpy as np, torch
torch.set_num_threads(2)
folder, depth, plane = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
def image():   # generated slab by slab so that the input itself is not what is measured
    return np.empty((depth, plane, plane), np.float32)
"""

STOCK = SETUP + """
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
img = image()
for z in range(0, depth, 16):
    img[z:z + 16] = rng.random((min(16, depth - z), plane, plane)) * 1000 + 1
p = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
p.initialize_from_trained_model_folder(folder, [0])
t = time.time()
_, probs = p.predict_single_npy_array(img[None], {"spacing": [50.0, 50.0, 50.0]}, None, None, True)
report(seconds=time.time() - t, mean=float(probs[1].mean()))
"""

OURS = SETUP + """
from nnunet_vasculature.io.volume_source import VolumeSource
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
def read(a, b):   # slices produced on demand, like reading TIFF slices from disk
    return np.random.default_rng(a).random((b - a, plane, plane)).astype(np.float32) * 1000 + 1
src = VolumeSource("v", (depth, plane, plane), (50.0, 50.0, 50.0), [], [(0, depth, read)])
total = [0.0]
def sink(z, p):
    total[0] += float(p.sum())
sp = StreamingPredictor(PredictionOptions.of(folder, [0], tta=False), torch.device("cpu"))
t = time.time()
sp.predict(src, sink)
report(seconds=time.time() - t, mean=total[0] / (depth * plane * plane))
"""

BASELINE = SETUP + """
import nnunetv2.inference.predict_from_raw_data, nnunet_vasculature.inference.streaming
report()
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--plane", type=int, default=256)
    a = ap.parse_args()
    from nnunet_vasculature.demo.tiny_model import make_model_folder
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(make_model_folder(Path(tmp) / "model", patch=(32, 64, 64), features=(4, 8, 16)))
        base = run_child(BASELINE, folder, "1", "1")["peak_rss_mib"]
        rows, stock_pts, figures = [], [], []
        for d in a.depths:
            vox = d * a.plane * a.plane
            o = run_child(OURS, folder, str(d), str(a.plane))
            s = run_child(STOCK, folder, str(d), str(a.plane))
            stock_pts.append((vox, s["peak_rss_mib"]))
            rows.append([f"{d}x{a.plane}x{a.plane}", f"{vox / 1e6:.1f} M", f"{o['peak_rss_mib']:.0f}",
                         f"{s['peak_rss_mib']:.0f}", f"{o['seconds']:.1f}", f"{s['seconds']:.1f}",
                         f"{abs(o['mean'] - s['mean']):.1e}"])
            figures.append({"volume": f"{d}x{a.plane}x{a.plane}", "voxels": vox,
                            "ours peak RSS (MiB)": o["peak_rss_mib"], "stock peak RSS (MiB)": s["peak_rss_mib"],
                            "ours (s)": o["seconds"], "stock (s)": s["seconds"],
                            "mean prob diff (abs)": abs(o["mean"] - s["mean"])})
    print(f"interpreter + torch + nnU-Net imported: {base:.0f} MiB")
    print(table(rows, ["volume", "voxels", "ours peak RSS MiB", "stock peak RSS MiB", "ours s", "stock s",
                       "|mean prob diff|"]))
    (v0, m0), (v1, m1) = stock_pts[0], stock_pts[-1]
    slope = (m1 - m0) / (v1 - v0) * 2 ** 20        # bytes per voxel
    fit = (24 * 1024 - m0) * 2 ** 20 / slope + v0
    print(f"stock grows by {slope:.0f} bytes/voxel: about {fit / 1e9:.2f} G voxels fit in 24 GiB "
          f"(kidney_1_dense is 2.71 G voxels); ours does not grow with depth.")
    record("predict_memory", {"imports peak RSS (MiB)": base, "rows": figures, "stock bytes/voxel": slope}, a)


if __name__ == "__main__":
    main()
