"""``nnunet-vasculature`` console script: one sub-command per stage.

Commands whose work differs by competition take it as their first word (see :mod:`.competitions`, whose
``MODULES`` names the module of each command and word); the others (``import-pretrained``, ``splits``, ``env``,
...) serve every competition and are listed in :data:`SHARED`. Only the module of the command being run is
imported, so ``--help``, ``env`` and ``COMMAND --help`` start without torch, scipy or nnU-Net, and a missing
third-party package is one line naming it (:func:`nnunet_vasculature.errors.describe_missing_dependency`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Iterable

from nnunet_vasculature.competitions import (
    COMMANDS,
    COMPETITIONS,
    DEFAULT,
    MODULES,
    command_groups,
    with_default_competition,
)
from nnunet_vasculature.errors import VERBOSE_ENV, describe_missing_dependency, run_cli

PROG = "nnunet-vasculature"
DESCRIPTION = ("nnU-Net v2 plugin for vessel and kidney-structure segmentation in HuBMAP / SenNet / Human Organ "
               "Atlas data")
# command -> (module with ``add_parser(sub)``, its help): one command each, for every competition. The help is the
# module's, repeated so that the top-level --help imports no module (tests/test_cli.py checks that they agree).
SHARED = {
    "import-pretrained": ("nnunet_vasculature.pretrained.import_pretrained",
                          "import an nnU-Net v1 or v2 model (Task008 zip, TotalSegmentator's "
                          "Dataset008_HepaticVessel.zip, a v2 model folder) for fine-tuning"),
    "splits": ("nnunet_vasculature.dataset_conversion.splits",
               "install a converted dataset's splits_final.json in nnUNet_preprocessed; with --predict_input, "
               "gather a fold's held-out and the test images for nnUNetv2_predict"),
    "env": ("nnunet_vasculature.env", "print the export that makes nnUNetv2_train/predict find our trainers"),
    "standin": ("nnunet_vasculature.demo.standin_cli",
                "write the demo's stand-in Task008 source model (the shipped one, or with --iterations a new build "
                "on the synthetic liver-CT source task) as a v1 download zip, to try the real-data recipe before "
                "downloading"),
    "export-model": ("nnunet_vasculature.export.model_zip",
                     "zip a trained model (nnU-Net's export layout) with its post-processing for a Kaggle notebook"),
    "hoa-store": ("nnunet_vasculature.synthetic.hoa_store",
                  "write synthetic kidneys as a local Human Organ Atlas mirror (N5 and OME-Zarr pyramids, catalogue "
                  "entries) to try predict -i hoa:NAME offline"),
    "view": ("nnunet_vasculature.view",
             "serve a predict output (.ome.zarr, with its labels/vessels and optionally the source OME-Zarr or N5) "
             "on 127.0.0.1 and print the Neuroglancer link showing them (pip install -e '.[view]')"),
    "bundle": ("nnunet_vasculature.export.bundle",
               "wheels of this package and its dependencies for an offline machine (Kaggle), plus the Kaggle "
               "inference script and notebook"),
}


def build_parser(argv: list[str] | None = None, prog: str = PROG, commands: Iterable[str] | None = None
                 ) -> tuple[argparse.ArgumentParser, dict[str, argparse._SubParsersAction]]:
    """The parser for ``argv``: only the sub-parser of the command (and competition word) it names is built.

    The other commands and words are registered with their help and no flags, so the top-level ``--help`` and
    argparse's "invalid choice" need no stage module.

    Args:
        argv: the command line after the program name, with the default competition already inserted
            (:func:`nnunet_vasculature.competitions.with_default_competition`); None builds every sub-parser
            (importing every stage module).
        prog: the program name in usage lines.
        commands: the commands offered (default: all, in the order of ``COMMANDS`` then ``SHARED``).

    Returns:
        The parser, and the competition sub-parsers of each of its per-competition commands.

    Raises:
        ModuleNotFoundError: a stage module (or its dependency) could not be imported.
    """
    commands = [c for c in (*COMMANDS, *SHARED) if commands is None or c in commands]
    command = argv[0] if argv else None
    word = argv[1] if argv and len(argv) > 1 else None
    per_competition = [c for c in commands if c in COMMANDS]
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     epilog=f"{', '.join(per_competition)} take a competition word first: "
                                            f"{', '.join(COMPETITIONS)} (default {DEFAULT} when omitted); "
                                            "`COMMAND --help` shows the default's flags.")
    sub = parser.add_subparsers(dest="command", required=True)
    groups = command_groups(sub, per_competition)
    for name in commands:
        if name in SHARED:
            module, help_text = SHARED[name]
            if argv is None or name == command:
                importlib.import_module(module).add_parser(sub)
            else:
                sub.add_parser(name, help=help_text)
            continue
        for competition, module in MODULES[name].items():
            if argv is None or (name, competition) == (command, word):
                importlib.import_module(module).add_parsers({name: groups[name]})
                if competition not in groups[name].choices:
                    raise RuntimeError(f"{module}.add_parsers did not register `{name} {competition}`")
            else:
                groups[name].add_parser(competition)
    return parser, groups


def main(argv: list[str] | None = None, prog: str = PROG, commands: Iterable[str] | None = None) -> int:
    """Run one command; returns the exit status.

    Args:
        argv: the command line after the program name (default ``sys.argv[1:]``).
        prog: the program name in usage lines.
        commands: the commands offered (default: all).

    Returns:
        0, or non-zero after a one-line error (a missing third-party package: 1).
    """
    argv = with_default_competition(sys.argv[1:] if argv is None else argv)
    try:
        return run_cli(build_parser(argv, prog, commands)[0], argv)
    except ModuleNotFoundError as e:
        line = describe_missing_dependency(e)
        if line is None:            # a module of this package: a bug
            raise
        if os.environ.get(VERBOSE_ENV) == "1":
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
