"""HuBMAP Hacking the Human Vasculature download -> nnU-Net raw (2D)."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``convert hubmap-vasculature``: registers the command in ``sub``."""
    p = sub.add_parser("hubmap-vasculature", help="HuBMAP vasculature tiles -> nnU-Net raw (2D)")

    def run(a: argparse.Namespace) -> None:
        raise UserError("convert hubmap-vasculature: not implemented yet")
    p.set_defaults(func=run)
