"""``nnunet-vasculature env``: the shell exports that let stock nnU-Net find our trainers."""
from __future__ import annotations

import argparse
import shlex

from nnunet_vasculature.trainers import ext_trainer_value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print the export that makes nnUNetv2_train/predict find our trainers")
    p.set_defaults(func=lambda a: print(f"export nnUNet_extTrainer={shlex.quote(ext_trainer_value())}"))
