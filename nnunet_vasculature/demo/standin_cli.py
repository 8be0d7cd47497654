"""``nnunet-vasculature standin``: the command only (the model code, and torch, load when it runs)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``standin``: the demo's stand-in Task008 source model as a v1 download zip (plus its .json record)."""
    s = sub.add_parser("standin", help="write the demo's stand-in Task008 source model (the shipped one, or with "
                                       "--iterations a new build on the synthetic liver-CT source task) as a v1 "
                                       "download zip, to try the real-data recipe before downloading")
    s.add_argument("-o", dest="output", type=Path, default=Path("Task008_HepaticVessel_standin.zip"))
    s.add_argument("--iterations", type=int, help="train a new one for this many iterations (250 "
                                                  "made the shipped one) instead of copying the shipped one")
    s.add_argument("--seed", type=int, default=0)

    def standin(a: argparse.Namespace) -> None:
        import shutil

        from nnunet_vasculature.errors import UserError, atomic_file
        if a.iterations is not None and a.iterations < 1:
            raise UserError("--iterations must be at least 1")
        if a.output.suffix != ".zip":
            raise UserError(f"{a.output}: the output must be a .zip file")
        from nnunet_vasculature.demo.standin import build_source, record_path, shipped_standin
        if a.iterations is None:
            path, _ = shipped_standin()
            for src, dst in ((record_path(path), record_path(a.output)), (path, a.output)):
                with atomic_file(dst) as tmp:
                    shutil.copyfile(src, tmp)
        else:
            build_source(a.output, a.seed, a.iterations)
        print(f"wrote {a.output} and {record_path(a.output)}\nnext: nnunet-vasculature import-pretrained "
              f"-i {a.output} -d ID")
    s.set_defaults(func=standin)
