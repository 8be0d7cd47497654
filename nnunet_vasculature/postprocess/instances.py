"""Vessel instances from nnU-Net probabilities."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``instances``: registers the command in ``sub``."""
    p = sub.add_parser("instances", help="turn vessel probabilities into scored instances")

    def run(a: argparse.Namespace) -> None:
        raise UserError("instances: not implemented yet")
    p.set_defaults(func=run)
