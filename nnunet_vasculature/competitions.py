"""The three competitions and the one grammar for choosing one.

Every command whose work differs by competition takes the competition as its first word::

    nnunet-vasculature COMMAND [sennet|hubmap-kidney|hubmap-vasculature] [flags]

Without the word the command is SenNet's (so ``python -m nnunet_vasculature.postprocess tune -i ...`` and
``nnunet-vasculature predict -i ...`` read as before, and ``predict --help`` shows SenNet's flags). Each
competition's parser declares only the flags it reads, so another competition's flag is an argparse error. A stage
module registers its parsers with ``add_parsers(groups)``, where ``groups`` maps a command to the sub-parsers of
its competition words; :data:`MODULES` says which module serves which command and word, so that the console
script imports only the one it runs.
"""
from __future__ import annotations

import argparse
import functools
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
    "stitch": "stock nnU-Net .npz outputs of z-chunk cases -> one zarr array per kidney",
    "pseudo-label": "union of sparse labels and confident predictions",
    "score": "score a prediction or submission with the competition's metric",
    "tune": "choose the post-processing (threshold, components, ...) that maximises the metric",
    "apply": "turn probabilities into the post-processed masks / instances",
    "submit": "write a Kaggle submission CSV",
    "validate": "check a submission CSV against the sample submission",
    "overlay": "draw a picture of a prediction against the truth",
    "demo": "run a whole chain on synthetic data (CPU, minutes)",
}

_PACKAGE = "nnunet_vasculature"
# command -> competition word -> the module whose ``add_parsers(groups)`` registers that word under the command
MODULES = {
    "synthesize": {SENNET: f"{_PACKAGE}.synthetic.sennet", HUBMAP_KIDNEY: f"{_PACKAGE}.synthetic.hubmap_kidney",
                   HUBMAP_VASCULATURE: f"{_PACKAGE}.synthetic.hubmap_vasculature"},
    "convert": {SENNET: f"{_PACKAGE}.dataset_conversion.sennet",
                HUBMAP_KIDNEY: f"{_PACKAGE}.dataset_conversion.hubmap_kidney",
                HUBMAP_VASCULATURE: f"{_PACKAGE}.dataset_conversion.hubmap_vasculature"},
    "predict": {SENNET: f"{_PACKAGE}.inference.predict", HUBMAP_KIDNEY: f"{_PACKAGE}.inference.slide"},
    "stitch": {SENNET: f"{_PACKAGE}.inference.stitch"},
    "pseudo-label": {SENNET: f"{_PACKAGE}.inference.pseudo_label"},
    **{command: {SENNET: f"{_PACKAGE}.postprocess.sennet", HUBMAP_KIDNEY: f"{_PACKAGE}.postprocess.hubmap_kidney",
                 HUBMAP_VASCULATURE: f"{_PACKAGE}.postprocess.hubmap_vasculature"}
       for command in ("score", "tune", "submit", "validate", "overlay")},
    "apply": {SENNET: f"{_PACKAGE}.postprocess.sennet",
              HUBMAP_VASCULATURE: f"{_PACKAGE}.postprocess.hubmap_vasculature"},
    "demo": {SENNET: f"{_PACKAGE}.demo.sennet", HUBMAP_KIDNEY: f"{_PACKAGE}.demo.hubmap_kidney",
             HUBMAP_VASCULATURE: f"{_PACKAGE}.demo.hubmap_vasculature"},
}


def words_line(command: str) -> str:
    """The line under a competition's ``--help`` that names the command's other words.

    Args:
        command: a key of :data:`COMMANDS`.

    Returns:
        e.g. ``competition words of predict: sennet (the default), hubmap-kidney (`predict WORD --help` shows
        a word's flags)``.
    """
    if list(MODULES[command]) == [DEFAULT]:
        return f"competition words of {command}: {DEFAULT} only (the default)"
    words = ", ".join(f"{w} (the default)" if w == DEFAULT else w for w in MODULES[command])
    return f"competition words of {command}: {words} (`{command} WORD --help` shows a word's flags)"


def command_groups(sub: argparse._SubParsersAction, commands: Iterable[str] = COMMANDS
                   ) -> dict[str, argparse._SubParsersAction]:
    """Add each command with a required competition word; returns command -> its competition sub-parsers.

    Args:
        sub: the console script's sub-parsers.
        commands: the keys of :data:`COMMANDS` to add.

    Returns:
        command -> the sub-parsers of its competition words (empty: the stage modules add them); each competition
        parser ends its help with :func:`words_line`.
    """
    groups = {}
    for name in commands:
        p = sub.add_parser(name, help=COMMANDS[name],
                           description=f"{COMMANDS[name]}. COMPETITION is one of {', '.join(MODULES[name])} "
                                       f"(default {DEFAULT} when omitted).")
        groups[name] = p.add_subparsers(dest="competition", required=True, metavar="COMPETITION",
                                        parser_class=functools.partial(argparse.ArgumentParser,
                                                                       epilog=words_line(name)))
    return groups


def with_default_competition(argv: list[str]) -> list[str]:
    """Insert the default competition after a command of :data:`MODULES` not followed by a competition word.

    ``predict --help`` becomes ``predict sennet --help`` (the flags, as ``nnUNetv2_predict -h`` shows them); a
    competition word the command does not serve is left for argparse to refuse. Only the first token is read as
    the command (the console script has no global flags before it).

    Args:
        argv: the command line after the program name.

    Returns:
        A new list.
    """
    argv = list(argv)
    if argv and argv[0] in MODULES and DEFAULT in MODULES[argv[0]]:
        if (argv[1] if len(argv) > 1 else None) not in COMPETITIONS:
            argv.insert(1, DEFAULT)
    return argv
