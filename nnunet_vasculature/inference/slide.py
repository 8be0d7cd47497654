"""Streaming prediction over gigapixel slides with nnU-Net 2D."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``predict-slide``: registers the command in ``sub``."""
    p = sub.add_parser("predict-slide", help="predict a whole slide with an nnU-Net 2D model")

    def run(a: argparse.Namespace) -> None:
        raise UserError("predict-slide: not implemented yet")
    p.set_defaults(func=run)
