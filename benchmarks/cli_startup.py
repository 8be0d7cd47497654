"""CLI start-up: wall time of `nnunet-vasculature --help`, `env`, `predict --help` and `tune --help`, each in a
fresh interpreter (median of N runs), against a bare `python -c pass` measured in the same run.

    .venv/bin/python -m benchmarks cli_startup [--runs 11]

The console script imports only the module of the command it runs (nnunet_vasculature/cli.py): `--help` and
`env` import no stage module, `predict --help` the SenNet predictor's, `tune --help` the SenNet post-processing
(scipy, scikit-image, cc3d).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import record, table_of

SCRIPT = str(Path(sys.executable).parent / "nnunet-vasculature")
COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "nnunet-vasculature --help": [SCRIPT, "--help"],
    "nnunet-vasculature env": [SCRIPT, "env"],
    "nnunet-vasculature predict --help": [SCRIPT, "predict", "--help"],
    "nnunet-vasculature tune --help": [SCRIPT, "tune", "--help"],
}


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds of ``runs`` fresh runs of ``argv`` (one untimed run first, for the file cache)."""
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=11, help="fresh interpreters per command (default 11)")
    a = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"Python {sys.version.split()[0]}, {a.runs} runs each")
    rows, reference = [], None
    for name, argv in COMMANDS.items():
        times = wall_times(argv, a.runs)
        median = statistics.median(times)
        reference = reference or median
        rows.append({"command": name, "median (s)": median, "min (s)": min(times), "max (s)": max(times),
                     "median / bare interpreter": median / reference})
    print(table_of(rows))
    record("cli_startup", {"rows": rows}, a)

if __name__ == "__main__":
    main()
