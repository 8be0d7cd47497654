"""Synthetic HuBMAP Hacking the Kidney slides in the Kaggle layout."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``synthesize hubmap-kidney``: registers the command in ``sub``."""
    p = sub.add_parser("hubmap-kidney", help="synthetic PAS kidney slides in the HuBMAP Kidney Kaggle layout")

    def run(a: argparse.Namespace) -> None:
        raise UserError("synthesize hubmap-kidney: not implemented yet")
    p.set_defaults(func=run)
