"""Helpers shared by the benchmark scripts: timing, peak RSS of a child process, table printing, and the run
records (`record`) that `python -m benchmarks --table NAME` renders."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

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


# ---- run records: benchmarks/runs/NAME.jsonl, one JSON line per run (nnU-Net's benchmark trainer writes a
# benchmark_result.json with the run's environment and figures; its summary script makes the table) ----

RUNS = Path(__file__).resolve().parent / "runs"
REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("torch", "nnunetv2", "numpy", "nnunet_vasculature")


def _git() -> dict:
    """The checkout's commit and whether tracked files differ from it (None where git is missing)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _machine() -> dict:
    """Cores, memory, load average and CPU model of this machine (Linux /proc where it exists)."""
    memory = model = None
    try:
        memory = next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal:")) / 2 ** 20
        model = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), None)
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": None if memory is None else round(memory, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_model": model or platform.processor()}


def _versions() -> dict:
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for package in VERSIONS:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def record(name: str, figures: dict, args, folder: Path = RUNS) -> dict:
    """Append one run record to ``folder/NAME.jsonl``: the machine, the versions, the git commit, the
    benchmark's name, parsed arguments and command line (``sys.argv[1:]``) and the figures it printed.

    Args:
        name: the benchmark's name (its module, e.g. ``metric``).
        figures: what it measured, JSON-serialisable; a list of dicts is a table (one dict a row, its keys the
            columns), any other value one figure.
        args: its parsed arguments (an ``argparse.Namespace`` or a dict); paths are written as strings.
        folder: where the records go (default ``benchmarks/runs``).

    Returns:
        The record written.
    """
    arguments = vars(args) if hasattr(args, "__dict__") else dict(args)
    entry = {"benchmark": name, "args": arguments, "argv": sys.argv[1:],
             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "git": _git(), "machine": _machine(), "versions": _versions(), "figures": figures}
    line = json.dumps(entry, default=str)           # serialise first: nothing half-written on a bad figure
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{name}.jsonl", "a") as f:
        f.write(line + "\n")
    return json.loads(line)


def load_records(name: str, folder: Path = RUNS) -> list[dict]:
    """The run records of ``folder/NAME.jsonl`` written by :func:`record`, oldest first.

    Args:
        name: the benchmark's name.
        folder: where the records are.

    Returns:
        The records; lines of another schema (the experiments' own runs) are left out.
    """
    path = Path(folder) / f"{name}.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
            if isinstance(entry, dict) and "benchmark" in entry and "figures" in entry:
                records.append(entry)
    return records


def _cell(value) -> str:
    """A figure as a markdown table cell: floats to 4 significant digits, ``|`` escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def table_of(rows: list[dict]) -> str:
    """A markdown table of rows given as dicts (the columns: their keys, in first-seen order)."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    return table([[_cell(row.get(key)) for key in header] for row in rows], [_cell(key) for key in header])


def render(entry: dict) -> str:
    """Markdown of one run record: a line with the command, date, commit, machine and versions, then its
    figures (tables for lists of dicts, one bullet per other figure).

    Args:
        entry: a record as :func:`record` writes it.

    Returns:
        The markdown text.
    """
    m, v, git = entry["machine"], entry["versions"], entry["git"]
    args = shlex.join(entry["argv"])
    sha = "unknown commit" if not git.get("sha") else git["sha"][:10] + (" + local changes" if git["dirty"] else "")
    head = (f"`python -m benchmarks {entry['benchmark']}{' ' + args if args else ''}` — {entry['time'][:10]}, "
            f"{sha}; {m['cpus_usable']} of {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, load "
            f"{' '.join(f'{x:.2f}' for x in m['load_average'])}; Python {v['python']}, torch {v.get('torch')}, "
            f"nnunetv2 {v.get('nnunetv2')}, numpy {v.get('numpy')}, nnunet_vasculature {v.get('nnunet_vasculature')}")
    parts, bullets = [head], []
    for key, value in entry["figures"].items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            parts.append(table_of(value))
        else:
            bullets.append(f"- {key}: {_cell(value)}")
    return "\n\n".join(parts + (["\n".join(bullets)] if bullets else []))
