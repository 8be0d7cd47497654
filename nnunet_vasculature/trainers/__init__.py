"""nnU-Net v2 trainers for vessel transfer learning, found by stock nnU-Net through ``nnUNet_extTrainer``."""
from __future__ import annotations

import os
from pathlib import Path

EXT_TRAINER_DIR = Path(__file__).resolve().parent / "ext"


def ext_trainer_value() -> str:
    """``$nnUNet_extTrainer`` with this package's trainer folder added (once)."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(EXT_TRAINER_DIR) not in current:
        current.append(str(EXT_TRAINER_DIR))
    return os.pathsep.join(current)


__all__ = ["EXT_TRAINER_DIR", "ext_trainer_value"]
