"""``nnunet-vasculature`` console script: one sub-command per stage.

Commands whose work differs by competition take it as their first word (see :mod:`.competitions`);
the others (``import-pretrained``, ``splits``, ``env``, ...) serve every competition.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_vasculature.competitions import command_groups, with_default_competition
from nnunet_vasculature.errors import run_cli

# modules with ``add_parsers(groups)``: each registers its competition's word under the commands it serves
COMPETITION_MODULES = (
    "nnunet_vasculature.synthetic.sennet",
    "nnunet_vasculature.synthetic.hubmap_kidney",
    "nnunet_vasculature.synthetic.hubmap_vasculature",
    "nnunet_vasculature.dataset_conversion.sennet",
    "nnunet_vasculature.dataset_conversion.hubmap_kidney",
    "nnunet_vasculature.dataset_conversion.hubmap_vasculature",
    "nnunet_vasculature.inference.predict",
    "nnunet_vasculature.inference.slide",
    "nnunet_vasculature.postprocess.sennet",
    "nnunet_vasculature.postprocess.hubmap_kidney",
    "nnunet_vasculature.postprocess.hubmap_vasculature",
    "nnunet_vasculature.demo.sennet",
    "nnunet_vasculature.demo.hubmap_kidney",
    "nnunet_vasculature.demo.hubmap_vasculature",
)
# modules with ``add_parser(sub)``: one command each, for every competition
SHARED_MODULES = (
    "nnunet_vasculature.pretrained.import_pretrained",
    "nnunet_vasculature.dataset_conversion.splits",
    "nnunet_vasculature.inference.stitch",
    "nnunet_vasculature.inference.pseudo_label",
    "nnunet_vasculature.env",
    "nnunet_vasculature.demo.standin_cli",
    "nnunet_vasculature.export.model_zip",
    "nnunet_vasculature.export.bundle",
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse._SubParsersAction]]:
    """The parser and the competition groups of its per-competition commands."""
    parser = argparse.ArgumentParser(prog="nnunet-vasculature", description="nnU-Net v2 plugin for vessel and "
                                     "kidney-structure segmentation in HuBMAP / SenNet / Human Organ Atlas data")
    sub = parser.add_subparsers(dest="command", required=True)
    groups = command_groups(sub)
    for name in COMPETITION_MODULES:
        # TRANSITION (restructuring in progress): modules not yet moved to add_parsers are skipped
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "add_parsers"):
            module.add_parsers(groups)
    for name in SHARED_MODULES:
        importlib.import_module(name).add_parser(sub)
    for command, group in list(groups.items()):
        if not group.choices:               # a command no competition serves yet
            sub.choices.pop(command)
            groups.pop(command)
    return parser, groups


def main(argv: list[str] | None = None) -> int:
    parser, groups = build_parser()
    return run_cli(parser, with_default_competition(sys.argv[1:] if argv is None else argv, groups))


if __name__ == "__main__":
    sys.exit(main())
