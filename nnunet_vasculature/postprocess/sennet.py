"""SenNet + HOA post-processing: ``score``, ``tune``, ``apply``, ``submit``, ``validate`` and ``overlay sennet``.

Metric: Kaggle's surface Dice at tolerance 0 per kidney (slices stacked in slice order, spacing 1), averaged over
kidneys; :func:`kidney_scorer` is the one place that accumulates it. ``tune`` picks the uint8 threshold level
(all 256 at once, :func:`~.surface_dice.surface_dice_sweep`), then whether a 3D closing and small-component removal
help (each kept only if it raises the mean), and writes postprocessing.json; ``apply``/``submit`` turn
probabilities into masks with it. Submission CSV: ``id,rle`` (row-major RLE, ``kidney_5_0000`` ids).
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_dir, atomic_file
from nnunet_vasculature.io.rle import rle_decode, rle_encode, rle_runs
from nnunet_vasculature.io.sennet import slice_id, split_slice_id
from nnunet_vasculature.io.tables import read_table
from nnunet_vasculature.io.volumes import ZSliceable, expand_probabilities, open_labels, open_probabilities
from nnunet_vasculature.postprocess.files import check_outputs, refuse_other_competition
from nnunet_vasculature.postprocess.morphology import level_histogram
from nnunet_vasculature.postprocess.surface_dice import SurfaceDiceAccumulator, surface_dice_sweep
from nnunet_vasculature.postprocess.tune import (
    BLOCK,
    LEVEL_HALF,
    best_fraction,
    best_option,
    grid_edge_warning,
    level_edge_warning,
    masks,
    non_negative_int,
    option_scores,
    plot_curves,
    read_postprocessing,
    warn,
    write_postprocessing,
)

COMPETITION = "sennet"
CC_CANDIDATES = (8, 32, 128, 512)


# ---------------------------------------------------------------------------------------------- the metric
def kidney_scorer(plane_shape: tuple[int, int]) -> SurfaceDiceAccumulator:
    """The per-kidney score, fed block by block (``add(pred_block, gt_block)``, then ``score()``): Kaggle's
    surface Dice at tolerance 0. Every score of this module (score, tune's closing and component options)
    is one of these.

    Args:
        plane_shape: (height, width) of the kidney's slices.

    Returns:
        A fresh accumulator.
    """
    return SurfaceDiceAccumulator(plane_shape)


def score_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]], plane_shape: tuple[int, int],
                 empty_score: float = float("nan")) -> float:
    """The per-kidney score of (prediction block, truth block) pairs given in slice order.

    Args:
        blocks: boolean (B, H, W) pairs, consecutive.
        plane_shape: (H, W).
        empty_score: the score when both masks are empty (NaN: left out of the mean).

    Returns:
        The kidney's score.
    """
    scorer = kidney_scorer(plane_shape)
    for pred, gt in blocks:
        scorer.add(pred, gt)
    return scorer.score(empty_score)


def split_id(i: str) -> tuple[str, int]:
    """``kidney_5_0012`` -> (``kidney_5``, 12); ValueError for another form."""
    kidney, name = split_slice_id(i)
    return kidney, int(name)


def score_csv(solution: Path, submission: Path) -> dict[str, float]:
    """Per-kidney score of a submission (``id,rle``) against a solution (``id,rle,width,height``), as the official
    metric groups it. Every solution row's size is read (a kidney whose rows disagree is refused), a repeated id in
    either file is refused, an id of the solution missing from the submission is refused.

    Args:
        solution: the solution CSV.
        submission: the submission CSV.

    Returns:
        Score per kidney (NaN where labels and prediction are both empty).
    """
    sol = read_table(solution, ("id", "rle", "width", "height"), competition=COMPETITION)
    sub = {r["id"]: r["rle"] for r in read_table(submission, ("id", "rle"), competition=COMPETITION)}
    kidneys: dict[str, list[tuple[int, dict, tuple[int, int], int]]] = {}
    for line, r in enumerate(sol, start=2):
        if r["id"] not in sub:
            raise UserError(f"{submission}: id {r['id']} of the solution is missing")
        try:
            kidney, z = split_id(r["id"])
            shape = (int(r["height"]), int(r["width"]))
        except ValueError as e:
            raise UserError(f"{solution}:{line}: {e}") from None
        kidneys.setdefault(kidney, []).append((z, r, shape, line))
    scores = {}
    for kidney, rows in kidneys.items():
        rows.sort(key=lambda t: t[0])
        shape, first_line = rows[0][2], rows[0][3]
        odd = next((t for t in rows if t[2] != shape), None)
        if odd is not None:
            raise UserError(f"{solution}:{odd[3]}: slice {odd[1]['id']} is {odd[2][1]} x {odd[2][0]} (width x "
                            f"height), line {first_line} of the same kidney {shape[1]} x {shape[0]}")

        def pairs(rows: list = rows, shape: tuple[int, int] = shape) -> Iterable[tuple[np.ndarray, np.ndarray]]:
            for _, r, _, _ in rows:
                try:
                    pred = rle_decode(sub[r["id"]], shape)
                except ValueError as e:
                    raise UserError(f"{submission}: id {r['id']}: {e}") from None
                try:
                    truth = rle_decode(r["rle"], shape)
                except ValueError as e:
                    raise UserError(f"{solution}: id {r['id']}: {e}") from None
                yield pred[None], truth[None]
        scores[kidney] = score_blocks(pairs(), shape)
    return scores


def kidney_name(labels: Path) -> str:
    """``.../kidney_1_dense/labels`` and ``.../kidney_1_dense`` both name kidney_1_dense."""
    return labels.parent.name if labels.name == "labels" else labels.name.split(".")[0]


def score_volumes(labels: Path, pred: Path, pp_path: Path | None = None) -> dict[str, float]:
    """Score of a predicted mask (slice folder, 3D file) or of probabilities turned into a mask with ``pp_path``.

    Args:
        labels: the kidney's labels.
        pred: the mask, or probabilities when ``pp_path`` is given.
        pp_path: postprocessing.json.

    Returns:
        {kidney: score}.
    """
    gt = open_labels(labels)
    if pp_path:
        prob, _ = open_probabilities(pred)
        blocks = masks(prob, load_postprocessing(pp_path))
        shape = tuple(prob.shape)
    else:
        if Path(pred).suffix in (".zarr", ".npz") or any(p.suffix == ".zarr" for p in Path(pred).parents):
            raise UserError(f"{pred}: holds probabilities; pass -pp postprocessing.json to turn them into a mask")
        mask = open_labels(pred)
        shape = tuple(mask.shape)
        blocks = ((z, mask[z:z + BLOCK]) for z in range(0, shape[0], BLOCK))
    if shape != tuple(gt.shape):
        raise UserError(f"{pred}: shape {shape} differs from labels {labels} {tuple(gt.shape)}")
    score = score_blocks(((m, gt[z0:z0 + len(m)]) for z0, m in blocks), gt.shape[1:])
    return {kidney_name(Path(labels)): score}


# ---------------------------------------------------------------------------------------------- tuning
def _check_shapes(prob: ZSliceable, labels: ZSliceable, p_path: Path | str, l_path: Path | str) -> None:
    if tuple(prob.shape) != tuple(labels.shape):
        raise UserError(f"{p_path}: probabilities of shape {tuple(prob.shape)} but labels {l_path} "
                        f"have shape {tuple(labels.shape)}")


def _name(path: Path | str, attrs: dict) -> str:
    return str(attrs.get("kidney") or Path(str(path)).stem)


def determine(prob_paths: list, label_paths: list, cc_candidates: Sequence[int] = CC_CANDIDATES,
              closing_radii: Sequence[int] = (), by_fraction: bool = False) -> dict:
    """Best threshold by mean score over kidneys, then whether a 3D closing and small-component removal help.

    Args:
        prob_paths: probability volumes (one per kidney).
        label_paths: their labels, same order.
        cc_candidates: minimum component sizes (voxels) to try.
        closing_radii: closing radii (voxels) to try.
        by_fraction: threshold each kidney where its foreground is the tuned fraction of its voxels.

    Returns:
        The decision and its evidence (postprocessing.json without its competition record).
    """
    if len(prob_paths) != len(label_paths):
        raise UserError(f"{len(prob_paths)} probability volumes but {len(label_paths)} label volumes")
    curves, kidneys, pairs, hists = [], [], [], []
    for p_path, l_path in zip(prob_paths, label_paths):
        prob, attrs = open_probabilities(p_path)
        labels = open_labels(l_path)
        _check_shapes(prob, labels, p_path, l_path)
        if not any(np.asarray(labels[z:z + BLOCK]).any() for z in range(0, labels.shape[0], BLOCK)):
            raise UserError(f"{l_path}: label volume is empty; it cannot rank thresholds")
        name = _name(p_path, attrs)
        print(f"sweeping 256 thresholds on {name} {tuple(prob.shape)}")
        curves.append(surface_dice_sweep(prob, labels, block=BLOCK))
        hists.append(level_histogram(prob, BLOCK))
        kidneys.append(name)
        pairs.append((prob, labels))
    mean = np.mean(curves, axis=0)
    best = int(np.argmax(mean))
    fraction, fraction_score, fraction_levels = best_fraction(curves, hists)
    levels = fraction_levels if by_fraction else [best] * len(pairs)
    closing_scores = {0: fraction_score if by_fraction else float(mean[best])}
    for radius in closing_radii:
        print(f"testing a closing of radius {radius}")
        closing_scores[int(radius)] = float(np.mean([
            option_scores(prob, labels, level, [0], int(radius), kidney_scorer)[0]
            for (prob, labels), level in zip(pairs, levels)]))
    radius = best_option(closing_scores)
    cc_scores = {0: closing_scores[radius]}
    if cc_candidates:
        totals = np.zeros(len(cc_candidates))
        for (prob, labels), name, level in zip(pairs, kidneys, levels):
            print(f"testing component removal on {name}")
            totals += option_scores(prob, labels, level, list(cc_candidates), radius, kidney_scorer)
        cc_scores.update({int(s): float(t / len(pairs)) for s, t in zip(cc_candidates, totals)})
    min_size = best_option(cc_scores)
    return {
        "threshold_mode": "fraction" if by_fraction else "probability",
        "threshold": best / 255.0,
        "threshold_u8": best,
        "vessel_fraction": fraction,
        "closing_radius": int(radius),
        "min_component_voxels": int(min_size),
        "mean_surface_dice": cc_scores[min_size],
        "mean_surface_dice_at_0.5": float(mean[LEVEL_HALF]),
        "mean_surface_dice_at_threshold": float(mean[best]),
        "mean_surface_dice_at_fraction": fraction_score,
        "kidneys": kidneys,
        "per_kidney_levels": {k: int(lv) for k, lv in zip(kidneys, levels)},
        "per_kidney_at_threshold": {k: float(c[lv]) for k, c, lv in zip(kidneys, curves, levels)},
        "per_kidney_at_0.5": {k: float(c[LEVEL_HALF]) for k, c in zip(kidneys, curves)},
        "closing_scores": {str(k): v for k, v in closing_scores.items()},
        "component_removal_scores": {str(k): v for k, v in cc_scores.items()},
        "curve_u8_levels": "entry k: mean surface Dice of probability_u8 >= k",
        "mean_curve": [float(x) for x in mean],
        "per_kidney_curves": {k: [float(x) for x in c] for k, c in zip(kidneys, curves)},
    }


def load_postprocessing(path: Path | str) -> dict:
    """SenNet's decision from a postprocessing.json (another competition's file is refused).

    Args:
        path: the file ``tune`` wrote (files without a competition entry are read when their schema is SenNet's).

    Returns:
        ``threshold_u8``, ``min_component_voxels``, ``threshold_mode``, ``vessel_fraction``, ``closing_radius``.
    """
    pp = read_postprocessing(path, COMPETITION)
    try:
        level = int(pp["threshold_u8"])
        min_size = int(pp.get("min_component_voxels", 0))
        mode = str(pp.get("threshold_mode", "probability"))
        fraction = float(pp.get("vessel_fraction", 0.0))
        closing = int(pp.get("closing_radius", 0))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a postprocessing.json from 'tune' ({type(e).__name__}: {e})") from None
    if not 0 <= level <= 255:
        raise UserError(f"{path}: threshold_u8 {level} outside 0..255")
    if mode not in ("probability", "fraction"):
        raise UserError(f"{path}: threshold_mode {mode!r} is neither 'probability' nor 'fraction'")
    if mode == "fraction" and not 0 < fraction <= 1:
        raise UserError(f"{path}: vessel_fraction {fraction} outside (0, 1]")
    if closing < 0 or min_size < 0:
        raise UserError(f"{path}: negative closing_radius or min_component_voxels")
    return {"threshold_u8": level, "min_component_voxels": min_size, "threshold_mode": mode,
            "vessel_fraction": fraction, "closing_radius": closing}


def plot_curve(result: dict, out_png: Path) -> None:
    """Surface Dice versus threshold of a ``determine`` result (per kidney and mean)."""
    cc = result["min_component_voxels"]
    notes = [f"{result['mean_surface_dice']:.4f} without components < {cc} voxels"] if cc else []
    plot_curves(result["per_kidney_curves"], result["mean_curve"], result["threshold_u8"],
                "surface Dice (tolerance 0)", out_png, notes)


# ---------------------------------------------------------------------------------------------- apply / submit
def slice_ids(path: Path | str, prob: ZSliceable, attrs: dict) -> list[str]:
    """Kaggle ids (``kidney_5_0000``) of each slice of a probability volume."""
    if "slice_ids" in attrs:
        ids = list(attrs["slice_ids"])
    else:
        names = attrs.get("slice_names") or [f"{i:04d}" for i in range(prob.shape[0])]
        ids = [slice_id(_name(path, attrs), n) for n in names]
    if len(ids) != prob.shape[0]:
        raise UserError(f"{path}: {len(ids)} slice ids for {prob.shape[0]} slices")
    return ids


def apply_to_folder(prob_path: Path | str, pp_path: Path | str, out_dir: Path, overwrite: bool = False) -> Path:
    """Write the post-processed mask as per-slice TIFFs (0/255, the Kaggle label convention).

    Returns:
        ``out_dir``.
    """
    prob, attrs = open_probabilities(prob_path)
    pp = load_postprocessing(pp_path)
    names = [split_slice_id(i)[1] for i in slice_ids(prob_path, prob, attrs)]
    with atomic_dir(Path(out_dir), overwrite) as tmp, tqdm(total=prob.shape[0], desc="apply", unit="slice") as bar:
        for z0, m in masks(prob, pp):
            for i, plane in enumerate(m):
                tifffile.imwrite(tmp / f"{names[z0 + i]}.tif", plane.astype(np.uint8) * np.uint8(255))
            bar.update(len(m))
    return Path(out_dir)


def submit(prob_paths: list, pp_path: Path | str, out_csv: Path, sample: Path | None = None) -> Path:
    """One row per slice, ``id,rle``; in the sample's order when a sample submission is given.

    Returns:
        ``out_csv``.
    """
    pp = load_postprocessing(pp_path)
    order = [r["id"] for r in read_table(sample, ("id",), competition=COMPETITION)] if sample is not None else None
    rows: dict[str, str] = {}
    for path in expand_probabilities(prob_paths):
        prob, attrs = open_probabilities(path)
        ids = slice_ids(path, prob, attrs)
        with tqdm(total=prob.shape[0], desc=f"submit {Path(path).name}", unit="slice") as bar:
            for z0, m in masks(prob, pp):
                for i, plane in enumerate(m):
                    if ids[z0 + i] in rows:
                        raise UserError(f"{path}: slice id {ids[z0 + i]} is predicted twice (two inputs of "
                                        f"one kidney?)")
                    rows[ids[z0 + i]] = rle_encode(plane)
                bar.update(len(m))
    if order is not None:
        missing = [i for i in order if i not in rows]
        if missing:
            raise UserError(f"{sample}: id {missing[0]} has no prediction ({len(missing)} ids missing)")
        extra = [i for i in rows if i not in set(order)]
        if extra:
            raise UserError(f"{sample}: predicted id {extra[0]} is not in the sample submission "
                            f"({len(extra)} such ids)")
    else:
        order = list(rows)
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
    seen = {r["id"] for r in rows}
    missing = [i for i in expected if i not in seen]
    if missing:
        raise UserError(f"{sub_csv}: id {missing[0]} of the sample submission is missing ({len(missing)} missing)")
    unknown = [i for i in seen if i not in set(expected)]
    if unknown:
        raise UserError(f"{sub_csv}: id {unknown[0]} is not in the sample submission ({len(unknown)} unknown)")
    print(f"{sub_csv}: {len(rows)} rows, valid" + ("" if shapes else
          "; runs were not checked against slice sizes (pass --images KAGGLE/test)"))
    return len(rows)


# ---------------------------------------------------------------------------------------------- overlay
def draw_overlay(labels: Path, pred: Path | str, png: Path, pp_path: Path | None = None, images: Path | None = None,
                 n_slices: int = 3) -> None:
    """Slices at 25-75 % depth: image | truth | prediction against truth, each row titled with the slice's Dice.

    Args:
        labels: the kidney's labels (or the kidney folder).
        pred: a mask (slice folder, 3D file), or probabilities with ``pp_path``.
        png: the picture to write.
        pp_path: postprocessing.json (when ``pred`` holds probabilities).
        images: the image slices (default: ``images/`` beside ``labels``).
        n_slices: rows.
    """
    from nnunet_vasculature.io.slices import list_slices
    from nnunet_vasculature.postprocess.overlay import draw_slices
    labels = Path(labels)
    kidney_dir = labels.parent if labels.name == "labels" else labels
    files = list_slices(Path(images) if images else kidney_dir / "images")
    gt = open_labels(labels)
    shown = [int(z) for z in np.linspace(0.25, 0.75, n_slices) * (gt.shape[0] - 1)]
    if pp_path is not None:
        prob, _ = open_probabilities(pred)
        pp = load_postprocessing(pp_path)
        rule = f"threshold {pp['threshold_u8'] / 255:.3f}" + (f", components >= {pp['min_component_voxels']} voxels"
                                                              if pp["min_component_voxels"] else "")
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
    refuse_other_competition([a.solution, a.submission, a.labels, a.pred, a.pp], COMPETITION, "score")
    if a.solution and a.submission:
        scores = score_csv(a.solution, a.submission)
    elif a.labels and a.pred:
        scores = score_volumes(a.labels, a.pred, a.pp)
    else:
        raise UserError("give --solution and --submission, or --labels and --pred")
    for k, v in scores.items():
        print(f"{k:<20s} {v:.6f}")
    valid = [v for v in scores.values() if not math.isnan(v)]
    print(f"{'mean':<20s} {np.mean(valid) if valid else float('nan'):.6f}")


def _run_tune(a: argparse.Namespace) -> None:
    refuse_other_competition([*a.input, *a.labels], COMPETITION, "tune")
    check_outputs([("-i", p) for p in a.input] + [("--labels", p) for p in a.labels],
                  [("-o", a.output), ("--plot", a.plot)])
    candidates = [] if a.no_cc else a.cc_sizes
    res = determine(expand_probabilities(a.input), a.labels, candidates, a.closing, a.by_fraction)
    write_postprocessing(res, a.output, COMPETITION)
    print(f"{'kidney':<20s} {'@0.5':>8s} {'@best':>8s}")
    for k in res["kidneys"]:
        print(f"{k:<20s} {res['per_kidney_at_0.5'][k]:8.4f} {res['per_kidney_at_threshold'][k]:8.4f}")
    if res["threshold_mode"] == "fraction":
        print(f"vessel fraction {res['vessel_fraction']:.6f} (levels {res['per_kidney_levels']}; one threshold "
              f"{res['threshold']:.4f} would give {res['mean_surface_dice_at_threshold']:.4f})")
    print(f"threshold {res['threshold']:.4f} (u8 {res['threshold_u8']}), closing radius {res['closing_radius']}, "
          f"min component {res['min_component_voxels']} voxels, mean surface Dice "
          f"{res['mean_surface_dice']:.4f} (at 0.5: {res['mean_surface_dice_at_0.5']:.4f})")
    for message in (level_edge_warning(res["threshold_u8"]) if res["threshold_mode"] == "probability" else None,
                    grid_edge_warning("--cc_sizes", [0, *candidates], res["min_component_voxels"], True),
                    grid_edge_warning("--closing", [0, *a.closing], res["closing_radius"], True)):
        if message:
            warn(message)
    if a.plot:
        plot_curve(res, a.plot)
    print(f"wrote {a.output}")


def _run_apply(a: argparse.Namespace) -> None:
    check_outputs([("-i", a.input), ("-pp", a.pp)], [("-o", a.output)])
    load_postprocessing(a.pp)                                  # before any work
    paths = expand_probabilities([a.input])                    # a store of several kidneys: a folder per kidney
    for p in paths:
        out = a.output if len(paths) == 1 else a.output / Path(p).name
        print(f"wrote {apply_to_folder(p, a.pp, out, a.overwrite)}")


def _run_submit(a: argparse.Namespace) -> None:
    refuse_other_competition([*a.input, a.sample], COMPETITION, "submit")
    check_outputs([("-i", p) for p in a.input] + [("-pp", a.pp), ("--sample", a.sample)], [("-o", a.output)])
    submit(a.input, a.pp, a.output, a.sample)


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
    draw_overlay(a.labels, a.pred, a.output, a.pp, a.images, a.slices)
    print(f"wrote {a.output}")


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Register ``sennet`` under score, tune, apply, submit, validate and overlay (those of ``groups``)."""
    if "score" in groups:
        s = groups["score"].add_parser(COMPETITION, help="surface Dice per kidney and mean")
        s.add_argument("--solution", type=Path, help="solution CSV (id,rle,width,height)")
        s.add_argument("--submission", type=Path, help="submission CSV (id,rle)")
        s.add_argument("--labels", type=Path, help="label slice folder (or Kaggle kidney folder / 3D file)")
        s.add_argument("--pred", type=Path, help="mask slice folder, or probabilities with -pp")
        s.add_argument("-pp", type=Path, help="postprocessing.json to turn --pred probabilities into a mask")
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
        t.add_argument("--closing", nargs="+", type=non_negative_int, default=[], metavar="R",
                       help="also try a 3D closing with a ball of these voxel radii (kept only if it helps)")
        t.add_argument("--by_fraction", action="store_true",
                       help="threshold each kidney at the tuned fraction of foreground voxels instead of one "
                            "probability")
        t.set_defaults(func=_run_tune)
    if "apply" in groups:
        ap = groups["apply"].add_parser(COMPETITION, help="write the post-processed mask as per-slice TIFFs")
        ap.add_argument("-i", dest="input", type=Path, required=True,
                        help="probabilities of one kidney, or a predict store (a folder per kidney)")
        ap.add_argument("-pp", type=Path, required=True, help="postprocessing.json from tune")
        ap.add_argument("-o", dest="output", type=Path, required=True, help="output folder of slice TIFFs")
        ap.add_argument("--overwrite", action="store_true")
        ap.set_defaults(func=_run_apply)
    if "submit" in groups:
        sm = groups["submit"].add_parser(COMPETITION, help="write a Kaggle submission CSV (id,rle)")
        sm.add_argument("-i", dest="input", nargs="+", required=True,
                        help="probabilities (a predict zarr holds every kidney)")
        sm.add_argument("-pp", type=Path, required=True, help="postprocessing.json from tune")
        sm.add_argument("-o", dest="output", type=Path, required=True, help="submission CSV to write")
        sm.add_argument("--sample", type=Path,
                        help="sample_submission.csv: row order and the ids that must be present")
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
        o.add_argument("--images", type=Path, help="image slices (default: images/ beside the labels)")
        o.add_argument("--slices", type=int, default=3, choices=range(1, 9), metavar="N", help="rows (1-8)")
        o.add_argument("-o", dest="output", type=Path, required=True, help="PNG to write")
        o.set_defaults(func=_run_overlay)
