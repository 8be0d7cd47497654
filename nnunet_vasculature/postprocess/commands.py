"""The post-processing commands ``score``, ``tune``, ``apply``, ``submit`` and ``validate``, one
implementation for ``python -m nnunet_vasculature.postprocess CMD`` and ``nnunet-vasculature CMD``."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import numpy as np

from nnunet_vasculature.errors import UserError


def _score(a: argparse.Namespace) -> None:
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.postprocess.submission import score_csv
    from nnunet_vasculature.postprocess.surface_dice import SurfaceDiceAccumulator
    from nnunet_vasculature.postprocess.tune import load_postprocessing, masks
    if a.solution and a.submission:
        scores = score_csv(a.solution, a.submission)
    elif a.labels and a.pred:
        gt = open_labels(a.labels)
        if a.pp:
            prob, _ = open_probabilities(a.pred)
            blocks = masks(prob, load_postprocessing(a.pp))
            shape = prob.shape
        else:
            if Path(a.pred).suffix in (".zarr", ".npz") or any(p.suffix == ".zarr" for p in Path(a.pred).parents):
                raise UserError(f"{a.pred}: holds probabilities; pass -pp postprocessing.json to turn them into a mask")
            pred = open_labels(a.pred)
            shape = pred.shape
            blocks = ((z, pred[z:z + 32]) for z in range(0, shape[0], 32))
        if tuple(shape) != tuple(gt.shape):
            raise UserError(f"{a.pred}: shape {tuple(shape)} differs from labels {a.labels} {tuple(gt.shape)}")
        acc = SurfaceDiceAccumulator(gt.shape[1:])
        for z0, m in blocks:
            acc.add(m, gt[z0:z0 + len(m)])
        scores = {_kidney_name(Path(a.labels)): acc.score()}
    else:
        raise UserError("give --solution and --submission, or --labels and --pred")
    for k, v in scores.items():
        print(f"{k:<20s} {v:.6f}")
    valid = [v for v in scores.values() if not math.isnan(v)]
    print(f"{'mean':<20s} {np.mean(valid) if valid else float('nan'):.6f}")


def _kidney_name(labels: Path) -> str:
    """``.../kidney_1_dense/labels`` and ``.../kidney_1_dense`` both name kidney_1_dense."""
    return labels.parent.name if labels.name == "labels" else labels.name.split(".")[0]


def _tune(a: argparse.Namespace) -> None:
    from nnunet_vasculature.io.volumes import expand_probabilities
    from nnunet_vasculature.postprocess.tune import determine, plot_curve, write_json
    probs = expand_probabilities(a.input)
    res = determine(probs, a.labels, [] if a.no_cc else [int(s) for s in a.cc_sizes], a.closing, a.by_fraction)
    write_json(res, a.output)
    print(f"{'kidney':<20s} {'@0.5':>8s} {'@best':>8s}")
    for k in res["kidneys"]:
        print(f"{k:<20s} {res['per_kidney_at_0.5'][k]:8.4f} {res['per_kidney_at_threshold'][k]:8.4f}")
    if res["threshold_mode"] == "fraction":
        print(f"vessel fraction {res['vessel_fraction']:.6f} (levels {res['per_kidney_levels']}; one threshold "
              f"{res['threshold']:.4f} would give {res['mean_surface_dice_at_threshold']:.4f})")
    print(f"threshold {res['threshold']:.4f} (u8 {res['threshold_u8']}), closing radius {res['closing_radius']}, "
          f"min component {res['min_component_voxels']} voxels, mean surface Dice "
          f"{res['mean_surface_dice']:.4f} (at 0.5: {res['mean_surface_dice_at_0.5']:.4f})")
    if a.plot:
        plot_curve(res, a.plot)
    print(f"wrote {a.output}")


def _apply(a: argparse.Namespace) -> None:
    from nnunet_vasculature.io.volumes import expand_probabilities
    from nnunet_vasculature.postprocess.tune import apply_to_folder
    paths = expand_probabilities([a.input])          # a store of several kidneys: a folder per kidney
    for p in paths:
        out = a.output if len(paths) == 1 else a.output / Path(p).name
        print(f"wrote {apply_to_folder(p, a.pp, out, a.overwrite)}")


def _submit(a: argparse.Namespace) -> None:
    from nnunet_vasculature.postprocess.submission import submit
    submit(a.input, a.pp, a.output, a.sample)


def _validate(a: argparse.Namespace) -> None:
    from nnunet_vasculature.io.slices import list_slices, slice_shape
    from nnunet_vasculature.postprocess.submission import validate
    shapes = None
    if a.images:
        shapes = {}
        for d in sorted(Path(a.images).glob("*/images")):
            shapes[d.parent.name] = slice_shape(list_slices(d)[0])
    validate(a.submission, a.sample, shapes)


COMPETITIONS = ("sennet", "hubmap-kidney", "hubmap-vasculature")


def _competition_module(name: str):  # noqa: ANN202 - a module
    from nnunet_vasculature.postprocess import hubmap_kidney, hubmap_vasculature
    return {"hubmap-kidney": hubmap_kidney, "hubmap-vasculature": hubmap_vasculature}[name]


def _with_competition(command: str, parser: argparse.ArgumentParser, sennet: Callable) -> None:
    """``--competition`` (default sennet) on a shared command; the other competitions add their own flags
    and take over the run."""
    parser.add_argument("--competition", choices=COMPETITIONS, default="sennet",
                        help="which Kaggle competition's data, metric and CSV format (default sennet)")
    for name in COMPETITIONS[1:]:
        _competition_module(name).add_arguments(command, parser)

    def run(a: argparse.Namespace) -> None:
        if a.competition == "sennet":
            sennet(a)
        else:
            _competition_module(a.competition).run(command, a)
    parser.set_defaults(func=run)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add score, tune, apply, submit and validate to a sub-command parser (both CLIs call this)."""
    s = sub.add_parser("score", help="surface Dice per kidney and mean")
    s.add_argument("--solution", type=Path, help="solution CSV (id,rle,width,height)")
    s.add_argument("--submission", type=Path, help="submission CSV (id,rle)")
    s.add_argument("--labels", type=Path, help="label slice folder (or Kaggle kidney folder / 3D file)")
    s.add_argument("--pred", type=Path, help="mask slice folder, or probabilities with -pp")
    s.add_argument("-pp", type=Path, help="postprocessing.json to turn --pred probabilities into a mask")
    _with_competition("score", s, _score)
    t = sub.add_parser("tune", help="best threshold (and component removal) by mean surface Dice")
    t.add_argument("-i", dest="input", nargs="+", required=True, help="probabilities (zarr, slice folder, .npz)")
    t.add_argument("--labels", nargs="+", required=True, help="labels, one per probability volume, same order")
    t.add_argument("-o", dest="output", type=Path, required=True, help="postprocessing.json to write")
    t.add_argument("--plot", type=Path, help="write the surface Dice vs threshold curve (PNG)")
    t.add_argument("--cc_sizes", nargs="+", default=[8, 32, 128, 512], help="component sizes to try (voxels)")
    t.add_argument("--no_cc", action="store_true", help="do not try removing small components")
    t.add_argument("--closing", nargs="+", type=int, default=[], metavar="R",
                   help="also try a 3D closing with a ball of these voxel radii (kept only if it helps)")
    t.add_argument("--by_fraction", action="store_true",
                   help="threshold each kidney at the tuned fraction of foreground voxels instead of one probability")
    _with_competition("tune", t, _tune)
    ap = sub.add_parser("apply", help="write the post-processed mask as per-slice TIFFs")
    ap.add_argument("-i", dest="input", type=Path, required=True,
                    help="probabilities of one kidney, or a predict zarr (then a folder per kidney under -o)")
    ap.add_argument("-pp", type=Path, required=True)
    ap.add_argument("-o", dest="output", type=Path, required=True, help="output folder of 0/255 slice TIFFs")
    ap.add_argument("--overwrite", action="store_true")
    ap.set_defaults(func=_apply)
    sm = sub.add_parser("submit", help="write a Kaggle submission CSV")
    sm.add_argument("-i", dest="input", nargs="+", required=True,
                    help="probabilities (a predict zarr holds every kidney)")
    sm.add_argument("-pp", type=Path, required=True)
    sm.add_argument("-o", dest="output", type=Path, required=True)
    sm.add_argument("--sample", type=Path, help="sample_submission.csv: row order and the ids that must be present")
    _with_competition("submit", sm, _submit)
    v = sub.add_parser("validate", help="check a submission against the sample submission")
    v.add_argument("submission", type=Path)
    v.add_argument("--sample", type=Path, required=True)
    v.add_argument("--images", type=Path, help="Kaggle test/ folder: check runs against slice sizes")
    _with_competition("validate", v, _validate)


__all__ = ["add_parsers"]
