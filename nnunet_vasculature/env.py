"""``nnunet-vasculature env``: the shell exports that let stock nnU-Net find our trainers."""
from __future__ import annotations

import os
import shlex

from nnunet_vasculature.trainers import EXT_TRAINER_DIR


def ext_trainer_value() -> str:
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(EXT_TRAINER_DIR) not in current:
        current.append(str(EXT_TRAINER_DIR))
    return os.pathsep.join(current)


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="print the export that makes nnUNetv2_train/predict find our trainers")
    p.set_defaults(func=lambda a: print(f"export nnUNet_extTrainer={shlex.quote(ext_trainer_value())}"))
