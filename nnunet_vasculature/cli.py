"""``nnunet-vasculature`` console script: one sub-command per stage."""
from __future__ import annotations

import argparse
import sys

from nnunet_vasculature.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    from nnunet_vasculature import env
    from nnunet_vasculature.dataset_conversion import sennet, synthesize
    from nnunet_vasculature.demo import run as demo
    from nnunet_vasculature.inference import predict, pseudo_label, stitch
    from nnunet_vasculature.postprocess import commands
    from nnunet_vasculature.pretrained import import_pretrained

    parser = argparse.ArgumentParser(prog="nnunet-vasculature", description="nnU-Net v2 plugin for vessel "
                                     "segmentation in HiP-CT kidneys (SenNet + HOA)")
    sub = parser.add_subparsers(dest="command", required=True)
    synthesize.add_parser(sub)
    sennet.add_parser(sub)
    import_pretrained.add_parser(sub)
    predict.add_parser(sub)
    stitch.add_parser(sub)
    pseudo_label.add_parser(sub)
    env.add_parser(sub)
    commands.add_parsers(sub)
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
