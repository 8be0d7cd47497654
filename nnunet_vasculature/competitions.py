"""The three competitions and the one grammar for choosing one.

Every command whose work differs by competition takes the competition as its first word::

    nnunet-vasculature COMMAND [sennet|hubmap-kidney|hubmap-vasculature] [flags]

Without the word the command is SenNet's (so ``python -m nnunet_vasculature.postprocess tune -i ...`` and
``nnunet-vasculature predict -i ...`` read as before). Each competition's parser declares only the flags it
reads, so another competition's flag is an argparse error. A stage module registers its parsers with
``add_parsers(groups)``, where ``groups`` maps a command to the sub-parsers of its competition words.
"""
from __future__ import annotations

import argparse
from typing import Iterable

SENNET, HUBMAP_KIDNEY, HUBMAP_VASCULATURE = "sennet", "hubmap-kidney", "hubmap-vasculature"
COMPETITIONS = (SENNET, HUBMAP_KIDNEY, HUBMAP_VASCULATURE)
DEFAULT = SENNET
TITLES = {SENNET: "SenNet + HOA - Hacking the Human Vasculature in 3D (3D HiP-CT kidneys, surface Dice)",
          HUBMAP_KIDNEY: "HuBMAP - Hacking the Kidney (glomeruli in whole-slide images, Dice)",
          HUBMAP_VASCULATURE: "HuBMAP - Hacking the Human Vasculature (vessel instances in 512 px tiles, AP@0.6)"}

# command -> help; each takes a competition word
COMMANDS = {
    "synthesize": "write synthetic data in a Kaggle download's layout",
    "convert": "convert a Kaggle download to an nnU-Net raw dataset",
    "predict": "predict probabilities with a trained model (bounded memory)",
    "score": "score a prediction or submission with the competition's metric",
    "tune": "choose the post-processing (threshold, components, ...) that maximises the metric",
    "apply": "turn probabilities into the post-processed masks / instances",
    "submit": "write a Kaggle submission CSV",
    "validate": "check a submission CSV against the sample submission",
    "overlay": "draw a picture of a prediction against the truth",
    "demo": "run a whole chain on synthetic data (CPU, minutes)",
}


def command_groups(sub: argparse._SubParsersAction, commands: Iterable[str] = COMMANDS
                   ) -> dict[str, argparse._SubParsersAction]:
    """Add each command with a required competition word; returns command -> its competition sub-parsers."""
    groups = {}
    for name in commands:
        p = sub.add_parser(name, help=COMMANDS[name],
                           description=f"{COMMANDS[name]}. COMPETITION is one of {', '.join(COMPETITIONS)} "
                                       f"(default {DEFAULT} when omitted).")
        groups[name] = p.add_subparsers(dest="competition", required=True, metavar="COMPETITION")
    return groups


def with_default_competition(argv: list[str], groups: dict[str, argparse._SubParsersAction]) -> list[str]:
    """Insert the default competition after a command of ``groups`` that is not followed by a word it knows.

    Only the first token is read as the command (the CLIs have no global flags before it)."""
    argv = list(argv)
    if argv and argv[0] in groups:
        known = set(groups[argv[0]].choices)
        nxt = argv[1] if len(argv) > 1 else None
        if nxt not in known and nxt not in ("-h", "--help") and DEFAULT in known:
            argv.insert(1, DEFAULT)
    return argv
