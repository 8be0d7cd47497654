"""`tune sennet` on a kidney-size pair: this checkout against the package of a git revision (HEAD by default, run
from a copy of its files), each in a fresh process with its own peak RSS, same pair, same decision asserted.

    .venv/bin/python -m benchmarks tune_speed [--shape 256 1303 912] [--before HEAD] [--closing 1] [--by_fraction]

The pair (uint8 probabilities in a zarr store laid out as ``predict`` writes it, one plane a chunk, and labels as
Kaggle's, one 0/255 TIFF a plane) is the synthesizer's vessel tree with a network-like probability map (a noisy
sigmoid of the signed distance), written slab by slab into ``--work`` (kept there for the next run). Each run calls
``sennet_tune.determine`` on the two paths with the default component sizes (8 32 128 512) and the given
``--closing`` radii / ``--by_fraction``; ``--profile`` prints the top cProfile lines of this checkout's run (its
main thread: the sweep's and the labelling's blocks run on 2 threads).
The whole Kaggle kidney is ``--shape 2279 1303 912`` (about 8 times the default's planes).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, record, run_child, table_of

TUNE = """
import cProfile, io, json, os, pstats, sys, time
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]     # the package from PYTHONPATH, not the cwd
import nnunet_vasculature
from nnunet_vasculature.postprocess.sennet_tune import determine
prob, labels, closing, by_fraction, profile = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1", \\
    sys.argv[5] == "1"
t, cpu = time.perf_counter(), time.process_time()
run = lambda: determine([prob], [labels], closing_radii=closing, by_fraction=by_fraction)
text = io.StringIO()
if profile:
    profiler = cProfile.Profile()
    res = profiler.runcall(run)
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
else:
    res = run()
report(seconds=time.perf_counter() - t, cpu_seconds=time.process_time() - cpu, result=res, profile=text.getvalue(),
       package=nnunet_vasculature.__file__)
"""


def write_pair(shape: tuple[int, int, int], folder: Path, slab: int = 32) -> tuple[Path, Path]:
    """``folder/Z_H_W/probs.zarr/kidney`` (uint8, written with zarr itself) and ``labels/`` (one 0/255 TIFF a plane,
    as Kaggle's kidneys), written slab by slab (never whole in memory); kept when both exist."""
    import tifffile
    import zarr

    from nnunet_vasculature.errors import atomic_dir
    from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field
    folder = folder / "_".join(map(str, shape))
    probs, labels = folder / "probs.zarr", folder / "labels"
    if probs.exists() and labels.exists():
        return probs / "kidney", labels
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tree = grow_tree(rng, np.array(shape, float), root_radius=min(shape) / 40, min_radius=1.0, n_roots=12,
                     missing_fraction=0.0)
    with atomic_dir(probs, overwrite=True) as tmp_probs, atomic_dir(labels, overwrite=True) as tmp_labels:
        p = zarr.open_group(str(tmp_probs), mode="w").create_array("kidney", shape=shape, chunks=(1, *shape[1:]),
                                                                     dtype="uint8")
        for z0 in range(0, shape[0], slab):
            block = (min(slab, shape[0] - z0), *shape[1:])
            sd = segment_field(np.array([z0, 0.0, 0.0]), block, 1.0, tree, False, 3.0)
            for z, plane in enumerate(sd <= 0, z0):
                tifffile.imwrite(tmp_labels / f"{z:04d}.tif", plane.astype(np.uint8) * 255)
            noisy = (sd + rng.normal(0, 0.6, block).astype(np.float32)) / 0.8
            p[z0:z0 + block[0]] = np.rint(255 / (1 + np.exp(np.clip(noisy, -30, 30)))).astype(np.uint8)
            print(f"\rwriting the pair: {z0 + block[0]} of {shape[0]} planes", end="", flush=True)
        p.attrs.update({"kidney": "kidney", "complete": True, "source": {"tool": "benchmark"},
                        "slice_ids": [f"kidney_{z:04d}" for z in range(shape[0])]})
        print()
    return probs / "kidney", labels


def package_at(revision: str, into: Path) -> Path:
    """The ``nnunet_vasculature`` package of a git revision, extracted into ``into`` (for PYTHONPATH)."""
    archive = subprocess.run(["git", "archive", revision, "nnunet_vasculature"], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def same_decision(a: dict, b: dict) -> list[str]:
    """The entries of two ``determine`` results that differ (floats beyond 1e-9)."""
    def close(x, y) -> bool:
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, list):
            return isinstance(y, list) and len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= 1e-9 or x == y or (np.isnan(x) and np.isnan(y))
        return x == y
    return [k for k in a.keys() | b.keys() if k not in a or k not in b or not close(a[k], b[k])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 1303, 912])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tune_speed")
    ap.add_argument("--before", default="HEAD", help="git revision measured as the reference (default HEAD)")
    ap.add_argument("--closing", type=int, nargs="*", default=[], help="closing radii to try, as tune's --closing")
    ap.add_argument("--by_fraction", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top lines of this checkout's run")
    ap.add_argument("--no-reference", action="store_true", help="time this checkout only")
    a = ap.parse_args()
    shape = tuple(a.shape)
    probs, labels = write_pair(shape, a.work)
    argv = (str(probs), str(labels), json.dumps(a.closing), "1" if a.by_fraction else "0")
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as old:
        runs = [("this checkout", str(REPO))]
        if not a.no_reference:
            runs.insert(0, (f"{a.before} (reference)", str(package_at(a.before, Path(old)))))
        for name, path in runs:
            env = {**__import__("os").environ, "PYTHONPATH": path}
            out = run_child(TUNE, *argv, "1" if a.profile and path == str(REPO) else "0", env=env)
            results[name] = out.pop("result")
            assert out["package"].startswith(path), f"{name}: imported {out['package']}, not the package in {path}"
            if out["profile"]:
                print(out["profile"])
            rows.append({"run": name, "seconds": out["seconds"], "cpu seconds": out["cpu_seconds"],
                         "peak RSS MiB": out["peak_rss_mib"], "threshold u8": results[name]["threshold_u8"],
                         "min component": results[name]["min_component_voxels"],
                         "closing": results[name]["closing_radius"], "mean score": results[name]["mean_score"]})
    if len(results) == 2:
        before, after = results.values()
        differ = same_decision(before, after)
        assert not differ, f"the results differ in {sorted(differ)}"
        rows[-1]["note"] = f"same result; {rows[0]['seconds'] / rows[-1]['seconds']:.2f}x faster"
    voxels = int(np.prod(shape))
    for row in rows:
        row["s per G voxels"] = row["seconds"] / voxels * 1e9
    print(table_of(rows))
    record("tune_speed", {"voxels": voxels, "rows": rows}, a)


if __name__ == "__main__":
    main()
