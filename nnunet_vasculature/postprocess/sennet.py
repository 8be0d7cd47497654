"""SenNet + HOA post-processing: ``score``, ``tune``, ``apply``, ``submit``, ``validate`` and ``overlay sennet``.

Metric: Kaggle's surface Dice at tolerance 0 per kidney (slices stacked in slice order, spacing 1), averaged over
kidneys; ``score`` computes it in :mod:`~nnunet_vasculature.postprocess.sennet_score`. ``tune`` picks the uint8
threshold level (all 256 at once, :func:`~nnunet_vasculature.metrics.surface_dice.surface_dice_sweep`), then
whether a 3D closing and small-component removal help (each kept only if it raises the mean), and writes
postprocessing.json; ``apply``/``submit`` turn probabilities into masks with it. Submission CSV: ``id,rle``
(row-major RLE, ``kidney_5_0000`` ids).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_dir, atomic_file
from nnunet_vasculature.io.rle import rle_decode, rle_encode, rle_runs
from nnunet_vasculature.io.sennet import slice_id, split_slice_id
from nnunet_vasculature.io.store import add_foreign_flag
from nnunet_vasculature.io.tables import read_table
from nnunet_vasculature.io.volumes import (
    ZSliceable,
    expand_probabilities,
    is_probability_image,
    open_labels,
    open_probabilities,
)
from nnunet_vasculature.postprocess.files import check_outputs, check_sample_ids, refuse_other_competition, sample_order
from nnunet_vasculature.postprocess.mask_rule import MaskRule
from nnunet_vasculature.postprocess.sennet_score import (
    kidney_name,
    score_csv,
    score_csv_metrics,
    score_volumes,
    split_id,
)
from nnunet_vasculature.postprocess.sennet_tune import (
    CC_CANDIDATES,
    COMPETITION,
    determine,
    kidney_of,
    load_mask_rule,
    load_postprocessing,
    plot_curve,
)
from nnunet_vasculature.postprocess.tune import (
    grid_edge_warning,
    import_mask_packages,
    level_edge_warning,
    masks,
    non_negative_int,
    warn,
    write_postprocessing,
)


# ---------------------------------------------------------------------------------------------- apply / submit
def slice_ids(path: Path | str, prob: ZSliceable, attrs: dict) -> list[str]:
    """Kaggle ids (``kidney_5_0000``) of each slice of a probability volume."""
    if "slice_ids" in attrs:
        ids = list(attrs["slice_ids"])
    else:
        names = attrs.get("slice_names") or [f"{i:04d}" for i in range(prob.shape[0])]
        ids = [slice_id(kidney_of(path, attrs), n) for n in names]
    if len(ids) != prob.shape[0]:
        raise UserError(f"{path}: {len(ids)} slice ids for {prob.shape[0]} slices")
    return ids


def apply_to_folder(prob_path: Path | str, pp_path: Path | str, out_dir: Path, overwrite: bool = False,
                    foreign_probabilities: bool = False) -> Path:
    """Write the post-processed mask as per-slice TIFFs (0/255, the Kaggle label convention).

    ``foreign_probabilities``: read an input without predict's record (as
    :func:`~nnunet_vasculature.io.volumes.open_probabilities`).

    Returns:
        ``out_dir``.
    """
    prob, attrs = open_probabilities(prob_path, foreign_probabilities)
    pp = load_mask_rule(pp_path)
    names = [split_slice_id(i)[1] for i in slice_ids(prob_path, prob, attrs)]
    with atomic_dir(Path(out_dir), overwrite) as tmp, tqdm(total=prob.shape[0], desc="apply", unit="slice") as bar:
        for z0, m in masks(prob, pp):
            for i, plane in enumerate(m):
                tifffile.imwrite(tmp / f"{names[z0 + i]}.tif", plane.astype(np.uint8) * np.uint8(255))
            bar.update(len(m))
    return Path(out_dir)


def submit(prob_paths: list, pp_path: Path | str, out_csv: Path, sample: Path | None = None,
           foreign_probabilities: bool = False) -> Path:
    """One row per slice, ``id,rle``; in the sample's order when a sample submission is given.

    ``foreign_probabilities``: read an input without predict's record (as
    :func:`~nnunet_vasculature.io.volumes.open_probabilities`).

    Returns:
        ``out_csv``.
    """
    pp = load_mask_rule(pp_path)
    order = [r["id"] for r in read_table(sample, ("id",), competition=COMPETITION)] if sample is not None else None
    paths, predicted = expand_probabilities(prob_paths, foreign_probabilities), {}
    opened = [open_probabilities(path, foreign_probabilities) for path in paths]
    for path, (prob, attrs) in zip(paths, opened):       # every id and the sample checked before any post-processing
        for i in slice_ids(path, prob, attrs):
            if i in predicted:
                raise UserError(f"{path}: slice id {i} is predicted twice (two inputs of one kidney?)")
            predicted[i] = path
    order = sample_order(predicted, order, sample)
    rows: dict[str, str] = {}
    for path, (prob, attrs) in zip(paths, opened):
        ids = slice_ids(path, prob, attrs)
        with tqdm(total=prob.shape[0], desc=f"submit {Path(path).name}", unit="slice") as bar:
            for z0, m in masks(prob, pp):
                rows.update((ids[z0 + i], rle_encode(plane)) for i, plane in enumerate(m))
                bar.update(len(m))
    with atomic_file(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("id", "rle"))
        w.writerows((i, rows[i]) for i in order)
    print(f"wrote {out_csv} ({len(order)} rows)" + ("" if sample is not None else
          "; ids and row order were not checked against a sample submission (pass --sample)"))
    return Path(out_csv)


def validate(sub_csv: Path, sample: Path, shapes: dict[str, tuple[int, int]] | None = None) -> int:
    """Refuse repeated/missing/unknown ids, malformed RLE and (with ``shapes``) runs beyond the slice.

    Returns:
        The number of rows.
    """
    rows = read_table(sub_csv, ("id", "rle"), competition=COMPETITION)
    expected = [r["id"] for r in read_table(sample, ("id",), competition=COMPETITION)]
    for line, r in enumerate(rows, start=2):
        try:
            kidney, _ = split_id(r["id"])
            shape = (shapes or {}).get(kidney)
            rle_decode(r["rle"], shape) if shape is not None else rle_runs(r["rle"])
        except ValueError as e:
            raise UserError(f"{sub_csv}:{line}: id {r['id']}: {e}") from None
    check_sample_ids(sub_csv, (r["id"] for r in rows), expected)
    print(f"{sub_csv}: {len(rows)} rows, valid" + ("" if shapes else
          "; runs were not checked against slice sizes (pass --images KAGGLE/test)"))
    return len(rows)


# ---------------------------------------------------------------------------------------------- overlay
def draw_overlay(labels: Path, pred: Path | str, png: Path, pp_path: Path | None = None, images: Path | None = None,
                 n_slices: int = 3, foreign_probabilities: bool = False) -> None:
    """Slices at 25-75 % depth: image | truth | prediction against truth, each row titled with the slice's Dice.

    Args:
        labels: the kidney's labels (or the kidney folder).
        pred: a mask (slice folder, 3D file), or probabilities with ``pp_path``.
        png: the picture to write.
        pp_path: postprocessing.json (when ``pred`` holds probabilities).
        images: the image slices (default: ``images/`` beside ``labels``).
        n_slices: rows.
        foreign_probabilities: read probabilities without predict's record (as
            :func:`~nnunet_vasculature.io.volumes.open_probabilities`).
    """
    from nnunet_vasculature.io.slices import list_slices
    from nnunet_vasculature.postprocess.overlay import draw_slices
    labels = Path(labels)
    kidney_dir = labels.parent if labels.name == "labels" else labels
    files = list_slices(Path(images) if images else kidney_dir / "images")
    gt = open_labels(labels)
    shown = [int(z) for z in np.linspace(0.25, 0.75, n_slices) * (gt.shape[0] - 1)]
    if pp_path is not None:
        prob, _ = open_probabilities(pred, foreign_probabilities)
        pp = load_mask_rule(pp_path)
        rule = f"threshold {pp.threshold:.3f}" + (f", components >= {pp.min_component_size} voxels"
                                                  if pp.min_component_size else "")
        shape = tuple(prob.shape)
        if shape == tuple(gt.shape):   # the whole mask is streamed (components span slices); the shown planes kept
            planes = {z0 + i: plane for z0, m in masks(prob, pp) for i, plane in enumerate(m) if z0 + i in shown}
    else:
        mask = open_labels(pred)
        shape, rule = tuple(mask.shape), "mask"
        planes = {z: np.asarray(mask[z:z + 1])[0] for z in shown} if shape == tuple(gt.shape) else {}
    if shape != tuple(gt.shape) or len(files) != shape[0]:
        raise UserError(f"{pred}: shape {shape}, labels {labels} {tuple(gt.shape)}, {len(files)} image slices")
    draw_slices(files, gt, planes, rule, f"{kidney_name(labels)}: prediction {Path(pred).name} against the labels",
                png)


# ---------------------------------------------------------------------------------------------- command line
def _run_score(a: argparse.Namespace) -> None:
    from nnunet_vasculature.metrics.hosts import check_metrics, mean_scores, write_scores_json
    refuse_other_competition([a.solution, a.submission, a.labels, a.pred, a.pp], COMPETITION, "score")
    metrics = check_metrics(a.metrics or ["nsd0"])
    if a.workers < 1:
        raise UserError(f"--workers {a.workers}: need at least 1")
    if a.json:
        check_outputs([(f, p) for f, p in (("--solution", a.solution), ("--submission", a.submission),
                                           ("--labels", a.labels), ("--pred", a.pred), ("-pp", a.pp)) if p],
                      [("--json", a.json)])
    if not ((a.solution and a.submission) or (a.labels and a.pred)):
        raise UserError("give --solution and --submission, or --labels and --pred")
    if metrics == ["nsd0"]:            # the competition's metric alone: the one-pass scorer
        scores = score_csv(a.solution, a.submission) if a.solution else \
            score_volumes(a.labels, a.pred, a.pp, foreign_probabilities=a.foreign_probabilities)
        per_kidney = {k: {"nsd0": v} for k, v in scores.items()}
    elif a.solution:
        per_kidney = score_csv_metrics(a.solution, a.submission, metrics, a.workers, a.scheduler)
    else:
        per_kidney = score_volumes(a.labels, a.pred, a.pp, metrics, a.workers, a.scheduler, a.foreign_probabilities)
    mean = mean_scores(per_kidney)
    if len(metrics) > 1:
        print(f"{'kidney':<20s} " + " ".join(f"{m:>10s}" for m in metrics))
    for k, row in [*per_kidney.items(), ("mean", mean)]:
        print(f"{k:<20s} " + " ".join(f"{row[m]:10.6f}" for m in metrics))
    if a.json:
        print(f"wrote {write_scores_json(per_kidney, a.json)}")


def _run_tune(a: argparse.Namespace) -> None:
    import_mask_packages()
    refuse_other_competition([*a.input, *a.labels], COMPETITION, "tune")
    check_outputs([("-i", p) for p in a.input] + [("--labels", p) for p in a.labels],
                  [("-o", a.output), ("--plot", a.plot)])
    candidates = [] if a.no_cc else a.cc_sizes
    res = determine(expand_probabilities(a.input, a.foreign_probabilities), a.labels, candidates, a.closing,
                    a.by_fraction, a.objective, a.foreign_probabilities)
    rule = MaskRule.from_json(write_postprocessing(res, a.output, COMPETITION), str(a.output))
    print(f"{'kidney':<20s} {'@0.5':>8s} {'@best':>8s}")
    for k in res["kidneys"]:
        print(f"{k:<20s} {res['per_kidney_at_0.5'][k]:8.4f} {res['per_kidney_at_threshold'][k]:8.4f}")
    if rule.by_fraction:
        print(f"vessel fraction {rule.vessel_fraction:.6f} (levels {res['per_kidney_levels']}; one threshold "
              f"{rule.threshold:.4f} would give {res['mean_score_at_threshold']:.4f})")
    print(f"threshold {rule.threshold:.4f} (u8 {rule.level}), closing radius {rule.closing_radius}, "
          f"min component {rule.min_component_size} voxels, mean {res['objective']} "
          f"{res['mean_score']:.4f} (at 0.5: {res['mean_score_at_0.5']:.4f})")
    for message in (None if rule.by_fraction else level_edge_warning(rule.level),
                    grid_edge_warning("--cc_sizes", [0, *candidates], rule.min_component_size, True),
                    grid_edge_warning("--closing", [0, *a.closing], rule.closing_radius, True)):
        if message:
            warn(message)
    if a.plot:
        plot_curve(res, a.plot)
    print(f"wrote {a.output}")


def apply_to_image(image: Path | str, pp_path: Path | str, overwrite: bool = False) -> Path:
    """Write the post-processed mask of an NGFF probability image (``predict -o NAME.ome.zarr``) as its NGFF
    label image ``labels/vessels`` (0/1, the image's geometry and pyramid).

    Args:
        image: the ``.ome.zarr`` image.
        pp_path: postprocessing.json from tune.
        overwrite: replace an existing ``labels/vessels``.

    Returns:
        The label image's path.
    """
    from nnunet_vasculature.io.ngff import NgffLabelsWriter
    prob, _ = open_probabilities(image)
    pp = load_mask_rule(pp_path)
    sink = NgffLabelsWriter(image, {"tool": "apply", "postprocessing": pp.applied()}, overwrite)
    with tqdm(total=prob.shape[0], desc="apply", unit="slice") as bar:
        for z0, m in masks(prob, pp):
            if z0 + len(m) > sink.start:
                sink(max(z0, sink.start), m[max(0, sink.start - z0):])
            bar.update(len(m))
    sink.close()
    return Path(image) / "labels" / "vessels"


def _run_apply(a: argparse.Namespace) -> None:
    import_mask_packages()
    check_outputs([("-i", a.input), ("-pp", a.pp)], [("-o", a.output)])
    load_mask_rule(a.pp)                                       # before any work
    if is_probability_image(a.input):                          # predict's .ome.zarr: labels/vessels inside it
        print(f"wrote {apply_to_image(a.input, a.pp, a.overwrite)}")
        if a.output is None:
            return
    elif a.output is None:
        raise UserError("give -o (a folder of slice TIFFs); only an .ome.zarr image of predict takes the mask inside")
    paths = expand_probabilities([a.input], a.foreign_probabilities)     # several kidneys: a folder per kidney
    for p in paths:
        out = a.output if len(paths) == 1 else a.output / Path(p).name
        print(f"wrote {apply_to_folder(p, a.pp, out, a.overwrite, a.foreign_probabilities)}")


def _run_submit(a: argparse.Namespace) -> None:
    import_mask_packages()
    refuse_other_competition([*a.input, a.sample], COMPETITION, "submit")
    check_outputs([("-i", p) for p in a.input] + [("-pp", a.pp), ("--sample", a.sample)], [("-o", a.output)])
    submit(a.input, a.pp, a.output, a.sample, a.foreign_probabilities)


def _run_validate(a: argparse.Namespace) -> None:
    from nnunet_vasculature.io.slices import list_slices, slice_shape
    refuse_other_competition([a.submission, a.sample], COMPETITION, "validate")
    shapes = None
    if a.images:
        shapes = {d.parent.name: slice_shape(list_slices(d)[0]) for d in sorted(Path(a.images).glob("*/images"))}
    validate(a.submission, a.sample, shapes)


def _run_overlay(a: argparse.Namespace) -> None:
    refuse_other_competition([a.labels, a.pred, a.pp], COMPETITION, "overlay")
    check_outputs([("--labels", a.labels), ("--pred", a.pred), ("-pp", a.pp), ("--images", a.images)],
                  [("-o", a.output)])
    draw_overlay(a.labels, a.pred, a.output, a.pp, a.images, a.slices, a.foreign_probabilities)
    print(f"wrote {a.output}")


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Register ``sennet`` under score, tune, apply, submit, validate and overlay (those of ``groups``)."""
    from nnunet_vasculature.metrics.base import METRICS, OBJECTIVES
    if "score" in groups:
        s = groups["score"].add_parser(COMPETITION, help="surface Dice per kidney and mean")
        s.add_argument("--solution", type=Path, help="solution CSV (id,rle,width,height)")
        s.add_argument("--submission", type=Path, help="submission CSV (id,rle)")
        s.add_argument("--labels", type=Path, help="label slice folder (or Kaggle kidney folder / 3D file)")
        s.add_argument("--pred", type=Path, help="mask slice folder, or probabilities with -pp")
        s.add_argument("-pp", type=Path, help="postprocessing.json to turn --pred probabilities into a mask")
        add_foreign_flag(s)
        s.add_argument("--metrics", nargs="+", metavar="METRIC",
                       help=f"the hosts' metrics to report per kidney: {' '.join(METRICS)} (default nsd0, the "
                            "competition's surface Dice); see docs/metrics.md")
        s.add_argument("--json", type=Path, help="also write the scores as JSON ({kidney: {metric: value}, mean})")
        where = s.add_argument_group("several cores or a dask cluster (--metrics beyond nsd0)")
        where = where.add_mutually_exclusive_group()
        where.add_argument("--workers", type=int, default=1, metavar="N", help="score N slabs at once (threads)")
        where.add_argument("--scheduler", metavar="ADDRESS", help="score the slabs on the dask cluster at ADDRESS")
        s.set_defaults(func=_run_score)
    if "tune" in groups:
        t = groups["tune"].add_parser(COMPETITION, help="best threshold (and component removal) by mean surface Dice")
        t.add_argument("-i", dest="input", nargs="+", required=True, help="probabilities (zarr, slice folder, .npz)")
        t.add_argument("--labels", nargs="+", required=True, help="labels, one per probability volume, same order")
        t.add_argument("-o", dest="output", type=Path, required=True, help="postprocessing.json to write")
        t.add_argument("--plot", type=Path, help="write the surface Dice vs threshold curve (PNG)")
        t.add_argument("--cc_sizes", nargs="+", type=non_negative_int, default=list(CC_CANDIDATES),
                       help="component sizes to try (voxels)")
        t.add_argument("--no_cc", action="store_true", help="do not try removing small components")
        t.add_argument("--objective", choices=OBJECTIVES, default="nsd0",
                       help="the metric to maximise (default nsd0, the competition's; nsd1 and cldice are scored at "
                            "every 16th threshold level)")
        t.add_argument("--closing", nargs="+", type=non_negative_int, default=[], metavar="R",
                       help="also try a 3D closing with a ball of these voxel radii (kept only if it helps)")
        t.add_argument("--by_fraction", action="store_true",
                       help="threshold each kidney at the tuned fraction of foreground voxels instead of one "
                            "probability")
        add_foreign_flag(t)
        t.set_defaults(func=_run_tune)
    if "apply" in groups:
        ap = groups["apply"].add_parser(COMPETITION, help="write the post-processed mask as per-slice TIFFs")
        ap.add_argument("-i", dest="input", type=Path, required=True,
                        help="probabilities of one kidney, or a predict store (a folder per kidney)")
        ap.add_argument("-pp", type=Path, required=True, help="postprocessing.json from tune")
        ap.add_argument("-o", dest="output", type=Path,
                        help="output folder of slice TIFFs (optional for an .ome.zarr image of predict: its mask "
                             "is written inside it as the NGFF label image labels/vessels)")
        ap.add_argument("--overwrite", action="store_true")
        add_foreign_flag(ap)
        ap.set_defaults(func=_run_apply)
    if "submit" in groups:
        sm = groups["submit"].add_parser(COMPETITION, help="write a Kaggle submission CSV (id,rle)")
        sm.add_argument("-i", dest="input", nargs="+", required=True,
                        help="probabilities (a predict zarr holds every kidney)")
        sm.add_argument("-pp", type=Path, required=True, help="postprocessing.json from tune")
        sm.add_argument("-o", dest="output", type=Path, required=True, help="submission CSV to write")
        sm.add_argument("--sample", type=Path,
                        help="sample_submission.csv: row order and the ids that must be present")
        add_foreign_flag(sm)
        sm.set_defaults(func=_run_submit)
    if "validate" in groups:
        v = groups["validate"].add_parser(COMPETITION, help="check a submission against the sample submission")
        v.add_argument("submission", type=Path)
        v.add_argument("--sample", type=Path, required=True)
        v.add_argument("--images", type=Path, help="Kaggle test/ folder: check runs against slice sizes")
        v.set_defaults(func=_run_validate)
    if "overlay" in groups:
        o = groups["overlay"].add_parser(COMPETITION, help="draw slices of a prediction against the labels (PNG)")
        o.add_argument("--labels", type=Path, required=True, help="the kidney's label slices (or its folder)")
        o.add_argument("--pred", type=Path, required=True, help="mask slice folder, or probabilities with -pp")
        o.add_argument("-pp", type=Path, help="postprocessing.json to turn --pred probabilities into a mask")
        add_foreign_flag(o)
        o.add_argument("--images", type=Path, help="image slices (default: images/ beside the labels)")
        o.add_argument("--slices", type=int, default=3, choices=range(1, 9), metavar="N", help="rows (1-8)")
        o.add_argument("-o", dest="output", type=Path, required=True, help="PNG to write")
        o.set_defaults(func=_run_overlay)


__all__ = ["COMPETITION", "CC_CANDIDATES", "determine", "load_mask_rule", "load_postprocessing", "plot_curve",
           "slice_ids", "apply_to_folder", "submit", "validate", "draw_overlay", "add_parsers"]
