"""What every demo shares: numbered steps with times, the path of the environment's console scripts, and
a workspace with the three nnU-Net folders and the stock commands' environment."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from nnunet_vasculature.errors import UserError

T = TypeVar("T")


class Steps:
    """Numbered demo steps, one line each with its time; stock tools' output goes to ``logs/NAME.log``."""

    def __init__(self, total: int, logs: Path):
        self.n, self.total, self.logs, self.t0 = 0, total, logs, time.time()

    def run(self, title: str, fn: Callable[..., T], *args, **kwargs) -> T:
        self.n += 1
        t = time.time()
        print(f"[{self.n}/{self.total}] {title} ...", flush=True)
        result = fn(*args, **kwargs)
        print(f"[{self.n}/{self.total}] {title}: done in {time.time() - t:.0f} s", flush=True)
        return result

    def shell(self, name: str, cmd: list[str], env: dict) -> None:
        log = self.logs / f"{name}.log"
        with open(log, "w") as f:
            r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["?"]
            raise UserError(f"{' '.join(cmd[:2])} failed (see {log}): {tail[0][:300]}")


def bin_path(name: str) -> str:
    """A console script of the running environment (the venv's nnUNetv2_* commands)."""
    return str(Path(sys.executable).parent / name)


def demo_workspace(out: Path, schedule: str, **extra: str) -> tuple[Path, Path, dict[str, Path], dict[str, str]]:
    """A demo's folders and the environment of its stock nnU-Net commands: ``out/logs`` and the three
    nnU-Net folders under ``out`` (created), our trainers on ``nnUNet_extTrainer``, the demo schedule, at
    most 2 augmentation workers unless set, plus ``extra``. nnU-Net's variables are also set in this
    process (for the steps that call nnU-Net in-process). Returns (out, logs, dirs, env)."""
    from nnunet_vasculature.trainers import ext_trainer_value
    from nnunet_vasculature.trainers.common import DEMO_ENV
    out = Path(out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    dirs = {k: out / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    env = dict(os.environ, **{k: str(v) for k, v in dirs.items()}, nnUNet_extTrainer=ext_trainer_value(),
               nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "2"), **{DEMO_ENV: schedule}, **extra)
    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet")})
    return out, logs, dirs, env
