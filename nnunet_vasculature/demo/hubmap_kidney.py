"""The HuBMAP Kidney chain on synthetic slides."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``demo hubmap-kidney``: registers the command in ``sub``."""
    p = sub.add_parser("hubmap-kidney", help="the HuBMAP Kidney chain on synthetic slides (CPU)")

    def run(a: argparse.Namespace) -> None:
        raise UserError("demo hubmap-kidney: not implemented yet")
    p.set_defaults(func=run)
