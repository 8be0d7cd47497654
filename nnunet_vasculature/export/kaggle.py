"""What the Kaggle inference script (``templates/kaggle_inference.py``) needs beyond the CLI: timed steps,
the inputs found in Kaggle's folders, and the runtime budget.

The script runs the same commands a user runs (``predict`` then ``submit``, as ``python -m
nnunet_vasculature.cli``), so its submission is the one the full environment writes. The budget: while
``predict`` runs, :class:`BudgetMonitor` reads the probability store's progress (``planes_done`` of each
kidney, :mod:`nnunet_vasculature.io.store`); once the first kidney's first planes are written, the time per
plane, weighted by each kidney's voxels in the model's grid (a 63 µm kidney is resampled to ~2x the voxels
at 50 µm), gives the time of every kidney; elapsed time (installs included) plus that estimate above
:data:`RISK_FRACTION` of the budget is a warning naming what to cut.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnunet_vasculature.errors import UserError

BUDGET_HOURS = 9.0            # SenNet's notebook limit
RISK_FRACTION = 0.9           # warn when the estimate exceeds this share of the budget


def clock(started: float) -> str:
    """``[h:mm:ss]`` since ``started``."""
    s = int(time.time() - started)
    return f"[{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}]"


def run_command(name: str, argv: Sequence[str], started: float, log: Callable[[str], None] = print) -> float:
    """Run ``nnunet-vasculature ARGV`` in a new interpreter (this one's), one timed line before and after.

    Args:
        name: the step's name in the lines.
        argv: the command line after ``nnunet-vasculature``.
        started: the script's start (for the clock).
        log: where the lines go.

    Returns:
        The step's seconds; a failed command is a UserError carrying its last line.
    """
    t0 = time.time()
    log(f"{clock(started)} {name}: nnunet-vasculature {' '.join(str(a) for a in argv)}")
    proc = subprocess.Popen([sys.executable, "-m", "nnunet_vasculature.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    last = ""
    for line in proc.stdout:
        if line.strip() and "\r" not in line:         # progress bars stay out of the notebook's log
            log(f"    {line.rstrip()}")
            last = line.strip()
    if proc.wait() != 0:
        raise UserError(f"{name} failed (exit {proc.returncode}): {last}")
    seconds = time.time() - t0
    log(f"{clock(started)} {name}: done in {seconds:.1f} s")
    return seconds


def find_input(root: Path, pattern: str, what: str, flag: str) -> Path:
    """The single ``root/*/pattern`` match (Kaggle attaches each dataset as ``/kaggle/input/<slug>/``).

    Args:
        root: ``/kaggle/input``.
        pattern: a glob below each dataset folder (``**/*.whl`` style allowed).
        what: what is looked for (in the message).
        flag: the script's flag that names it instead.

    Returns:
        The match; a one-line UserError when there is none or more than one.
    """
    hits = sorted({p for p in Path(root).glob(f"*/{pattern}")})
    if len(hits) != 1:
        raise UserError(f"{root}: {len(hits)} {what} found ({', '.join(map(str, hits[:3])) or 'none'}); pass {flag}")
    return hits[0]


@dataclass(frozen=True)
class KidneyCost:
    name: str
    planes: int
    weight: float             # voxels of one plane in the model's grid


def kidney_costs(test_dir: Path, model_folder: Path, configuration: str,
                 spacing: Sequence[str] | None = None) -> list[KidneyCost]:
    """Each kidney of ``test_dir`` with its planes and the model-grid voxels of one plane.

    Args:
        test_dir: Kaggle's ``test/`` folder.
        model_folder: the installed model.
        configuration: the model's configuration (for its spacing).
        spacing: the ``--spacing`` words given to ``predict`` (``UM`` or ``KIDNEY=UM``), as predict reads them.

    Returns:
        One entry per kidney, in the order ``predict`` takes them.
    """
    from nnunet_vasculature.io.input_spec import open_inputs
    plans = json.loads((Path(model_folder) / "plans.json").read_text())
    model_spacing = plans["configurations"][configuration]["spacing"]
    model_voxel = float(model_spacing[0]) * float(model_spacing[1]) * float(model_spacing[2])
    out = []
    for src in open_inputs(test_dir, tuple(spacing) if spacing else None, log=None):
        voxel = float(src.spacing[0]) * float(src.spacing[1]) * float(src.spacing[2])
        out.append(KidneyCost(src.name, int(src.shape[0]), src.shape[1] * src.shape[2] * voxel / model_voxel))
    return out


def estimate_seconds(costs: Sequence[KidneyCost], first_done: int, first_seconds: float) -> float:
    """The prediction time of every kidney from the first kidney's first planes.

    Args:
        costs: the kidneys (the first is the one measured).
        first_done: planes of the first kidney written.
        first_seconds: seconds they took.

    Returns:
        Estimated seconds for all kidneys, the ones measured included.
    """
    per_unit = first_seconds / max(first_done * costs[0].weight, 1e-9)
    return per_unit * sum(c.planes * c.weight for c in costs)


class BudgetMonitor(threading.Thread):
    """Watches the store while ``predict`` runs and reports the estimate once (see the module's description)."""

    def __init__(self, store: Path, costs: Sequence[KidneyCost], started: float, budget_hours: float = BUDGET_HOURS,
                 poll_seconds: float = 20.0, log: Callable[[str], None] = print):
        super().__init__(daemon=True)
        self.store, self.costs, self.started = Path(store), list(costs), started
        self.budget_s, self.poll_s, self.log = budget_hours * 3600.0, poll_seconds, log
        self.stop_event = threading.Event()
        self.estimate_s: float | None = None
        self.at_risk = False

    def _planes_done(self, kidney: str) -> int | None:
        meta = self.store / kidney / "zarr.json"
        if not meta.is_file():
            return None
        try:
            return int(json.loads(meta.read_text()).get("attributes", {}).get("planes_done", 0))
        except (OSError, ValueError):
            return None          # being rewritten: read it next time

    def run(self) -> None:
        first = self.costs[0] if self.costs else None
        kidney_start = None
        while first is not None and not self.stop_event.wait(self.poll_s):
            done = self._planes_done(first.name)
            if done is None:
                continue
            now = time.time()
            if kidney_start is None:
                kidney_start = now if done == 0 else self.predict_started
            if done > 0 and now > kidney_start:
                self.report(estimate_seconds(self.costs, done, now - kidney_start), done, now)
                return

    def report(self, predict_seconds: float, done: int, now: float) -> None:
        elapsed = now - self.started
        measured = now - self.predict_started
        total = elapsed - measured + predict_seconds
        self.estimate_s, self.at_risk = total, total > RISK_FRACTION * self.budget_s
        self.log(f"{clock(self.started)} budget: {done}/{self.costs[0].planes} planes of {self.costs[0].name} -> "
                 f"prediction of {len(self.costs)} kidney(s) ~{predict_seconds / 3600:.2f} h; whole run ~"
                 f"{total / 3600:.2f} h of {self.budget_s / 3600:g} h")
        if self.at_risk:
            self.log(f"WARNING: the {self.budget_s / 3600:g}-hour budget is at risk (estimated {total / 3600:.1f} h): "
                     f"use fewer folds (export-model -f), --disable_tta, nnUNet_compile=1 on the GPU, or a larger "
                     f"-step_size; see docs/kaggle.md 'Runtime budget'")

    def start_watching(self) -> None:
        """Start watching (the prediction starts now)."""
        self.predict_started = time.time()
        self.start()

    def stop(self) -> None:
        """Stop watching (the prediction ended)."""
        self.stop_event.set()
        self.join(timeout=5)


__all__ = ["BUDGET_HOURS", "RISK_FRACTION", "clock", "run_command", "find_input", "KidneyCost", "kidney_costs",
           "estimate_seconds", "BudgetMonitor"]
