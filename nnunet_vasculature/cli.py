"""``nnunet-vasculature`` console script: one sub-command per stage.

``synthesize``, ``convert`` and ``demo`` take the dataset as their first word (``sennet``,
``hubmap-kidney``, ``hubmap-vasculature``); the post-processing commands take ``--competition``.
"""
from __future__ import annotations

import argparse
import sys

from nnunet_vasculature.errors import run_cli


def _group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    p = sub.add_parser(name, help=help)
    return p.add_subparsers(dest="dataset", required=True, metavar="DATASET")


def build_parser() -> argparse.ArgumentParser:
    from nnunet_vasculature import env
    from nnunet_vasculature.dataset_conversion import (
        hubmap_kidney,
        hubmap_vasculature,
        sennet,
        synthesize,
        synthesize_hubmap_kidney,
        synthesize_hubmap_vasculature,
    )
    from nnunet_vasculature.demo import hubmap_kidney as demo_kidney
    from nnunet_vasculature.demo import hubmap_vasculature as demo_vasculature
    from nnunet_vasculature.demo import run as demo
    from nnunet_vasculature.inference import predict, pseudo_label, slide, stitch
    from nnunet_vasculature.postprocess import commands, instances
    from nnunet_vasculature.pretrained import import_pretrained

    parser = argparse.ArgumentParser(prog="nnunet-vasculature", description="nnU-Net v2 plugin for vessel and "
                                     "kidney-structure segmentation in HuBMAP / SenNet data")
    sub = parser.add_subparsers(dest="command", required=True)
    syn = _group(sub, "synthesize", "write synthetic data in a Kaggle download's layout")
    for m in (synthesize, synthesize_hubmap_kidney, synthesize_hubmap_vasculature):
        m.add_parser(syn)
    conv = _group(sub, "convert", "convert a Kaggle download to nnU-Net raw format")
    for m in (sennet, hubmap_kidney, hubmap_vasculature):
        m.add_parser(conv)
    sennet.add_splits_parser(sub)
    import_pretrained.add_parser(sub)
    predict.add_parser(sub)
    slide.add_parser(sub)
    stitch.add_parser(sub)
    pseudo_label.add_parser(sub)
    instances.add_parser(sub)
    env.add_parser(sub)
    commands.add_parsers(sub)
    dem = _group(sub, "demo", "run a whole chain on synthetic data (CPU, ~10 minutes)")
    for m in (demo, demo_kidney, demo_vasculature):
        m.add_parser(dem)
    demo.add_standin_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
