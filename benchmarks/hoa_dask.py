"""`predict --workers 2` on OME-Zarr inputs read and written chunk-aligned (issue 24, point 4): peak RSS per dask
worker at two input depths (flat in the depth), and resume after a killed worker.

    .venv/bin/python -m benchmarks hoa_dask [--plane 768] [--depths 256 512] [--resume_depth 192]

The defaults keep the run near 10 minutes on a 2-core machine (the tiny network predicts ~1-2 M voxels/s per
worker there); --plane 1024 --depths 1024 2048 gives the 2 and 4 GiB inputs of a bigger machine.

The inputs are NGFF 0.4 images (z, y, x, uint16, 128^3 chunks, blosc zstd) written chunk row by chunk row by
zarr itself, a smooth synthetic texture. Each prediction is the real command line (`nnunet-vasculature predict
-i IN.ome.zarr -o OUT.ome.zarr --workers 2 -device cpu --disable_tta -step_size 1`) in a fresh process with
a tiny network whose spacing is the input's (no resampling); the output is an NGFF image with 64-plane chunks
and the slabs (256 planes) are whole output chunk rows. Peak RSS: VmHWM of every process of the run's tree,
sampled every 0.25 s (the two largest besides the client are the dask workers).

Resume: on the smaller input, one worker process is killed (SIGKILL) once a slab is marked done, then the
whole run (client and cluster) is killed; the same command is run again and must finish only the missing slabs;
the image (every pyramid level) must equal an uninterrupted run's, byte for byte.

Both tables are appended to the run records (`python -m benchmarks --table hoa_dask`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from benchmarks.common import peak_rss_kib, process_tree, record, table
from nnunet_vasculature.demo.tiny_model import make_model_folder

CLI = str(Path(sys.executable).parent / "nnunet-vasculature")
SPACING_UM = 50.0


def write_input(path: Path, depth: int, plane: int, chunk: int = 128) -> float:
    """An NGFF 0.4 image (zarr format 2) of a smooth uint16 texture, written a chunk row at a time; GiB."""
    from numcodecs import Blosc
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = group.create_array("0", shape=(depth, plane, plane), chunks=(chunk,) * 3, dtype="<u2",
                             compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
                             chunk_key_encoding={"name": "v2", "separator": "/"})
    yy, xx = np.meshgrid(np.arange(plane), np.arange(plane), indexing="ij")
    base = (np.sin(yy / 17.0) * np.cos(xx / 23.0) * 8000 + 20000).astype(np.float32)
    rng = np.random.default_rng(0)
    for z0 in range(0, depth, chunk):
        n = min(chunk, depth - z0)
        zs = np.sin((np.arange(z0, z0 + n) / 29.0))[:, None, None].astype(np.float32) * 4000
        block = base[None] + zs + rng.normal(0, 300, (n, plane, plane)).astype(np.float32)
        arr[z0:z0 + n] = np.clip(block, 0, 65535).astype(np.uint16)
    group.attrs["multiscales"] = [{"version": "0.4", "name": path.name.split(".")[0], "axes": [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [SPACING_UM] * 3}]}]}]
    return depth * plane * plane * 2 / 2 ** 30


def run_predict(args: list[str], kill_after_slabs: int | None = None, progress: Path | None = None) -> dict:
    """The CLI in a fresh process group; peaks per process (MiB); optionally kill a worker, then everything."""
    started = time.time()
    p = subprocess.Popen([CLI, "predict", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peaks: dict[int, int] = {}
    killed = None
    while p.poll() is None:
        peaks[p.pid] = max(peaks.get(p.pid, 0), peak_rss_kib(p.pid))
        for c in process_tree(p.pid):
            peaks[c] = max(peaks.get(c, 0), peak_rss_kib(c))
        if kill_after_slabs is not None and killed is None and progress is not None and progress.exists():
            try:
                done = int(np.asarray(zarr.open_array(str(progress), mode="r")[:]).sum())
            except Exception:  # noqa: BLE001 - the array may be half-created
                done = 0
            if done >= kill_after_slabs:
                workers = sorted((c for c in process_tree(p.pid)), key=lambda c: -peaks.get(c, 0))[:2]
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
                time.sleep(3)
                os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.25)
    output = p.stdout.read()
    if p.returncode and killed is None:
        raise RuntimeError(f"predict failed ({p.returncode}):\n{output[-3000:]}")
    client = peaks.pop(p.pid, 0) / 1024
    others = sorted((v / 1024 for v in peaks.values()), reverse=True)
    return {"seconds": time.time() - started, "client_mib": client, "workers_mib": others[:2], "output": output,
            "killed": killed, "returncode": p.returncode}


DEPTH_HEADER = ["input (z, y, x) uint16", "GiB", "write s", "predict s (2 workers)", "peak RSS per worker MiB",
                "client MiB", "output levels"]
RESUME_HEADER = ["resume input", "uninterrupted s", "interrupted run", "rerun s", "equal to uninterrupted", "complete"]


def depth_table(rows: list[dict]) -> str:
    """The first printed table (a row per input depth) from the recorded rows.

    Args:
        rows: the ``rows`` figure: dicts of ``input (z, y, x) uint16``, ``GiB``, ``write (s)``, ``predict (s)``,
            ``peak RSS per worker (MiB)`` (a list), ``client (MiB)`` and ``output levels``.

    Returns:
        The markdown table.
    """
    return table([[r["input (z, y, x) uint16"], f"{r['GiB']:.2f}", f"{r['write (s)']:.0f}", f"{r['predict (s)']:.0f}",
                   " / ".join(f"{m:.0f}" for m in r["peak RSS per worker (MiB)"]), f"{r['client (MiB)']:.0f}",
                   str(r["output levels"])] for r in rows], DEPTH_HEADER)


def resume_table(rows: list[dict]) -> str:
    """The second printed table (the resume check) from the recorded rows.

    Args:
        rows: the ``resume`` figure: dicts of ``resume input``, ``uninterrupted (s)``, ``killed worker`` (its pid),
            ``interrupted rc``, ``slabs marked done``, ``slabs``, ``rerun (s)``, ``resume line``, ``equal to
            uninterrupted``, ``levels`` and ``complete``.

    Returns:
        The markdown table.
    """
    return table([[r["resume input"], f"{r['uninterrupted (s)']:.0f}",
                   f"worker {r['killed worker']} SIGKILLed, then the run (rc {r['interrupted rc']}); "
                   f"{r['slabs marked done']} of {r['slabs']} slabs marked done",
                   f"{r['rerun (s)']:.0f}; {r['resume line']}", f"{r['equal to uninterrupted']} ({r['levels']} levels)",
                   str(r["complete"])] for r in rows], RESUME_HEADER)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plane", type=int, default=768)
    ap.add_argument("--depths", type=int, nargs=2, default=[256, 512])
    ap.add_argument("--resume_depth", type=int, default=192)
    ap.add_argument("--resume_plane", type=int, default=384)
    ap.add_argument("--slab_planes", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    root = Path(a.out or tempfile.mkdtemp(prefix="hoa_dask_"))
    root.mkdir(parents=True, exist_ok=True)
    model = make_model_folder(root / "model", spacing=(SPACING_UM,) * 3, patch=(32, 256, 256), features=(2, 4),
                              strides=((1, 1, 1), (2, 2, 2)))
    common = ["-m", str(model), "-device", "cpu", "--disable_tta", "-step_size", "1", "--workers", "2",
              "--slab_planes", str(a.slab_planes)]
    rows = []
    for depth in a.depths:
        source = root / f"in_{depth}.ome.zarr"
        t = time.time()
        gib = write_input(source, depth, a.plane)
        written = time.time() - t
        r = run_predict(["-i", str(source), "-o", str(root / f"out_{depth}.ome.zarr"), *common])
        image = zarr.open_group(str(root / f"out_{depth}.ome.zarr"), mode="r")
        assert image.attrs["nnunet_vasculature"]["complete"]
        rows.append({"input (z, y, x) uint16": f"{depth}x{a.plane}x{a.plane}", "GiB": gib, "write (s)": written,
                     "predict (s)": r["seconds"], "peak RSS per worker (MiB)": [round(m) for m in r["workers_mib"]],
                     "client (MiB)": r["client_mib"],
                     "output levels": len([k for k in image.array_keys() if k.isdigit()])})
    print(depth_table(rows))

    source = root / "small.ome.zarr"
    write_input(source, a.resume_depth, a.resume_plane)
    small_args = [*common[:-1], "64"]                       # 64-plane slabs: several slabs on the small input
    reference = run_predict(["-i", str(source), "-o", str(root / "small_ref.ome.zarr"), *small_args])
    out = root / "small_resumed.ome.zarr"
    first = run_predict(["-i", str(source), "-o", str(out), *small_args], kill_after_slabs=1,
                        progress=out / "_slabs" / "small")
    marks = zarr.open_group(str(out), mode="r")["_slabs/small"][:]
    second = run_predict(["-i", str(source), "-o", str(out), *small_args])
    ref, got = (zarr.open_group(str(p), mode="r") for p in (root / "small_ref.ome.zarr", out))
    levels = sorted(k for k in ref.array_keys() if k.isdigit())
    equal = all(np.array_equal(ref[k][:], got[k][:]) for k in levels)
    resumed = next((line for line in second["output"].splitlines() if "resuming" in line), "no resume line")
    resume = [{"resume input": f"{a.resume_depth}x{a.resume_plane}x{a.resume_plane}",
               "uninterrupted (s)": reference["seconds"], "killed worker": first["killed"],
               "interrupted rc": first["returncode"], "slabs marked done": int(marks.sum()), "slabs": int(marks.size),
               "rerun (s)": second["seconds"], "resume line": resumed.strip(), "equal to uninterrupted": bool(equal),
               "levels": len(levels), "complete": got.attrs["nnunet_vasculature"]["complete"]}]
    print(resume_table(resume))
    print(json.dumps({"root": str(root)}))
    record("hoa_dask", {"rows": rows, "resume": resume}, a)


if __name__ == "__main__":
    main()
