"""score/tune/submit/validate for HuBMAP Hacking the Human Vasculature (AP@0.6, COCO RLE)."""
from __future__ import annotations

import argparse

from nnunet_vasculature.errors import UserError


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Add this competition's own flags to the shared ``command`` parser (score, tune, submit, validate)."""


def run(command: str, a: argparse.Namespace) -> None:
    """Run ``command`` for this competition."""
    raise UserError(f"{command} --competition hubmap-vasculature: not implemented yet")
