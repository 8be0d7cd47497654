"""``python -m nnunet_vasculature.postprocess {score,tune,apply,submit,validate} [COMPETITION] ...``.

The same commands and competition words as ``nnunet-vasculature``; without a word the command is SenNet's, so
``python -m nnunet_vasculature.postprocess tune -i val.zarr --labels ... -o postprocessing.json`` reads as it
always did."""
from __future__ import annotations

import argparse
import sys

from nnunet_vasculature.competitions import command_groups, with_default_competition
from nnunet_vasculature.errors import run_cli
from nnunet_vasculature.postprocess import hubmap_kidney, hubmap_vasculature, sennet

COMMANDS = ("score", "tune", "apply", "submit", "validate")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse._SubParsersAction]]:
    """The parser and its competition groups (command -> competition sub-parsers)."""
    parser = argparse.ArgumentParser(prog="python -m nnunet_vasculature.postprocess",
                                     description="score, tune post-processing, apply it and write Kaggle "
                                                 "submissions, for each of the three competitions")
    groups = command_groups(parser.add_subparsers(dest="command", required=True), COMMANDS)
    for module in (sennet, hubmap_kidney, hubmap_vasculature):
        module.add_parsers(groups)
    return parser, groups


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser, groups = build_parser()
    return run_cli(parser, with_default_competition(sys.argv[1:] if argv is None else argv, groups))


if __name__ == "__main__":
    sys.exit(main())
