"""Conversion benchmark on a --scale full synthetic kidney (2279 x 1303 x 912, the real kidney_1_dense
shape): throughput of `convert sennet` as a ratio to the disk's own speed for the same bytes (`cp -r` of the
kidney's images and labels folders onto the same file system, then `sync`: what any conversion that writes what
it reads must at least cost), and to reading the slices with tifffile alone (the page cache's speed); the
converter's time includes its own `sync`, so both sides end with the bytes on the disk. Each step runs in a fresh
process, all in this run, the page cache warmed by one read first. Also compares how fast nnU-Net reads one
converted case back in three formats.

    .venv/bin/python -m benchmarks convert [--data bench-data/full] [--slices N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import record, run_child, table, table_of

READ_ONLY = """
import sys, time, numpy as np, tifffile
from pathlib import Path
from nnunet_vasculature.io.slices import list_slices
k = Path(sys.argv[1]) / "train" / "kidney_1_dense"
t = time.time()
n = 0
for sub in ("images", "labels"):
    for f in list_slices(k / sub):
        n += tifffile.imread(f).nbytes
report(seconds=time.time() - t, bytes=n)
"""

CONVERT = """
import os, sys, time
from nnunet_vasculature.dataset_conversion.sennet import convert_sennet
os.sync()
t = time.time()
convert_sennet(sys.argv[1], 990, "Bench", sys.argv[2], kidneys=["kidney_1_dense"], overwrite=True)
written = time.time() - t
os.sync()
report(seconds=time.time() - t, before_sync=written, cpu_seconds=sum(os.times()[:2]))
"""

COPY = """
import os, subprocess, sys, time
from pathlib import Path
k = Path(sys.argv[1]) / "train" / "kidney_1_dense"
os.sync()
t = time.time()
for sub in ("images", "labels"):
    subprocess.run(["cp", "-r", str(k / sub), str(Path(sys.argv[2]) / sub)], check=True)
written = time.time() - t
os.sync()
report(seconds=time.time() - t, before_sync=written)
"""

READBACK = """
import sys, time, glob
import numpy as np
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.imageio.tif_reader_writer import Tiff3DIO
f = sys.argv[1]
io = Tiff3DIO() if f.endswith(".tif") else SimpleITKIO()
times = []
for _ in range(3):   # the first read may come from disk, later ones from the page cache: report both
    t = time.time()
    img, props = io.read_images([f])
    times.append(time.time() - t)
report(seconds=min(times[1:]), first=times[0], shape=list(img.shape))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("bench-data/full"))
    ap.add_argument("--keep", action="store_true", help="keep the converted dataset")
    a = ap.parse_args()
    if not (a.data / "train_rles.csv").exists():
        print(f"synthesizing the full-size kidney into {a.data} (5.4 GB of images + labels) ...")
        from nnunet_vasculature.synthetic.sennet import synthesize
        synthesize(a.data, seed=0, scale="full", overwrite=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    raw = Path(tempfile.mkdtemp(prefix="bench-raw-", dir=a.data.parent))
    try:
        # warm the page cache equally for both: read once, then measure read and convert
        run_child(READ_ONLY, str(a.data), env=env)
        r = run_child(READ_ONLY, str(a.data), env=env)
        copy = raw / "cp"
        copy.mkdir()
        p = run_child(COPY, str(a.data), str(copy), env=env)
        shutil.rmtree(copy)
        c = run_child(CONVERT, str(a.data), str(raw), env=env)
        gb = r["bytes"] / 1e9
        steps = [("tifffile read of every slice (images + labels), cached", r),
                 ("cp -r images labels + sync (the reference)", p),
                 ("convert sennet (read + validate + write cases) + sync", c)]
        rows = [{"step": name, "seconds": round(x["seconds"], 2),
                 "before sync s": round(x["before_sync"], 2) if "before_sync" in x else None,
                 "GB/s": round(gb / x["seconds"], 3), "peak RSS MiB": round(x["peak_rss_mib"]),
                 "throughput vs cp + sync": round(p["seconds"] / x["seconds"], 2)} for name, x in steps]
        rows[-1]["cpu seconds"] = round(c["cpu_seconds"], 1)
        print(table_of(rows))
        # read-back of one case in three formats, as nnU-Net's readers do it
        case = sorted((raw / "Dataset990_Bench" / "imagesTr").glob("*_0000.tif"))[0]
        import SimpleITK as sitk
        import tifffile
        arr = tifffile.imread(case)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((50.0, 50.0, 50.0))
        fmt_rows = []
        for ext, comp in ((".nii.gz", True), (".mha", False)):
            f = case.with_name(case.name.replace(".tif", ext))
            sitk.WriteImage(img, str(f), useCompression=comp)
        for f in (case, case.with_name(case.name.replace(".tif", ".nii.gz")),
                  case.with_name(case.name.replace(".tif", ".mha"))):
            b = run_child(READBACK, str(f), env=env)
            fmt_rows.append([f.name.split("_0000")[-1] + (" (chosen)" if f == case else ""),
                             f"{f.stat().st_size / 1e6:.0f}", f"{b['seconds']:.2f}", f"{b['first']:.2f}"])
        print(f"one case {tuple(arr.shape)} read by nnU-Net's reader:")
        print(table(fmt_rows, ["format", "MB", "read s (cached)", "first read s (may hit the disk)"]))
        record("convert", {"bytes": r["bytes"], "rows": rows,
                           "readback": [dict(zip(["format", "MB", "read s (cached)", "first read s"], f))
                                        for f in fmt_rows]}, a)
    finally:
        if not a.keep:
            shutil.rmtree(raw, ignore_errors=True)


if __name__ == "__main__":
    main()
