"""HuBMAP Hacking the Kidney download -> nnU-Net raw (2D)."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``convert hubmap-kidney``: registers the command in ``sub``."""
    p = sub.add_parser("hubmap-kidney", help="HuBMAP Hacking the Kidney slides -> nnU-Net raw (2D)")

    def run(a: argparse.Namespace) -> None:
        raise UserError("convert hubmap-kidney: not implemented yet")
    p.set_defaults(func=run)
