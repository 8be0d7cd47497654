"""The HuBMAP vasculature chain on synthetic tiles."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``demo hubmap-vasculature``: registers the command in ``sub``."""
    p = sub.add_parser("hubmap-vasculature", help="the HuBMAP vasculature chain on synthetic tiles (CPU)")

    def run(a: argparse.Namespace) -> None:
        raise UserError("demo hubmap-vasculature: not implemented yet")
    p.set_defaults(func=run)
