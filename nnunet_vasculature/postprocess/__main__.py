"""``python -m nnunet_vasculature.postprocess {score,tune,apply,submit,validate}`` (also available as
``nnunet-vasculature score|tune|apply|submit|validate``)."""
from __future__ import annotations

import argparse
import sys

from nnunet_vasculature.errors import run_cli
from nnunet_vasculature.postprocess.commands import add_parsers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nnunet_vasculature.postprocess",
                                description="surface-Dice scoring, threshold tuning and Kaggle submissions")
    add_parsers(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
