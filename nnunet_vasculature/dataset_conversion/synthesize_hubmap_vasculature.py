"""Synthetic HuBMAP Hacking the Human Vasculature tiles in the Kaggle layout."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``synthesize hubmap-vasculature``: registers the command in ``sub``."""
    p = sub.add_parser("hubmap-vasculature", help="synthetic 512x512 tiles in the HuBMAP vasculature Kaggle layout")

    def run(a: argparse.Namespace) -> None:
        raise UserError("synthesize hubmap-vasculature: not implemented yet")
    p.set_defaults(func=run)
