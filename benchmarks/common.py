"""Helpers shared by the benchmark scripts: timing, peak RSS of a child process, table printing."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# Peak RSS from /proc/self/status VmHWM: ru_maxrss is not used because Linux carries the parent's
# high-water mark into a forked-then-exec'd child, which would hide children smaller than the parent.
REPORT = """
import json as _json
def report(**kw):
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    kw["peak_rss_mib"] = hwm / 1024
    print(_json.dumps(kw))
"""


def run_child(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it calls ``report(...)`` once, which adds its own peak RSS (MiB)."""
    r = subprocess.run([sys.executable, "-c", REPORT + code, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def kaggle_rle(img: np.ndarray) -> str:
    """The run-length snippet most Kaggle notebooks used (row-major, 1-based starts; "" when empty): the
    independent reference our encoder is checked and timed against."""
    pixels = np.concatenate([[0], img.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def table(rows: list[list], header: list[str]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in cols[1:]])


def mean_sd(values, f: str = ".3f") -> str:
    """``mean ± sd [min–max]`` (sample sd; no sd for one value)."""
    v = np.asarray(values, dtype=float)
    sd = f" ± {v.std(ddof=1):{f}}" if len(v) > 1 else ""
    return f"{v.mean():{f}}{sd} [{v.min():{f}}–{v.max():{f}}]"


def process_tree(pid: int) -> list[int]:
    """Every process below ``pid`` (parents read from /proc/*/stat)."""
    import os
    from pathlib import Path
    parent = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        me = todo.pop()
        kids = [c for c, p in parent.items() if p == me]
        out += kids
        todo += kids
    return out


def peak_rss_kib(pid: int) -> int:
    """A process's VmHWM (KiB); 0 once it is gone."""
    try:
        return next(int(x.split()[1]) for x in open(f"/proc/{pid}/status") if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0
