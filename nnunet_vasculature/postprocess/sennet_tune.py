"""SenNet's ``tune``: the threshold level maximising the mean per-kidney objective (the competition's surface
Dice by default: all 256 levels in one pass), then whether a 3D closing and small-component removal help (each
kept only if it raises the mean); and reading the decision back from postprocessing.json."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.volumes import ZSliceable
from nnunet_vasculature.postprocess.mask_rule import MaskRule
from nnunet_vasculature.postprocess.tune import (
    BLOCK,
    LEVEL_HALF,
    WORKERS,
    best_fraction,
    best_option,
    option_scores,
    plot_curves,
    read_mask_rule,
)

COMPETITION = "sennet"
CC_CANDIDATES = (8, 32, 128, 512)


def _check_shapes(prob: ZSliceable, labels: ZSliceable, p_path: Path | str, l_path: Path | str) -> None:
    if tuple(prob.shape) != tuple(labels.shape):
        raise UserError(f"{p_path}: probabilities of shape {tuple(prob.shape)} but labels {l_path} "
                        f"have shape {tuple(labels.shape)}")


def kidney_of(path: Path | str, attrs: dict) -> str:
    """The kidney a probability volume holds (its ``kidney`` attribute, else the file's name)."""
    return str(attrs.get("kidney") or Path(str(path)).stem)


def determine(prob_paths: list, label_paths: list, cc_candidates: Sequence[int] = CC_CANDIDATES,
              closing_radii: Sequence[int] = (), by_fraction: bool = False, objective: str = "nsd0",
              foreign_probabilities: bool = False) -> dict:
    """Best threshold by mean score over kidneys, then whether a 3D closing and small-component removal help.

    Args:
        prob_paths: probability volumes (one per kidney).
        label_paths: their labels, same order.
        cc_candidates: minimum component sizes (voxels) to try.
        closing_radii: closing radii (voxels) to try.
        by_fraction: threshold each kidney where its foreground is the tuned fraction of its voxels.
        objective: the metric maximised (``nsd0``, the competition's, or ``nsd1 cldice dice``: the hosts'
            others); ``nsd1``/``cldice`` are scored at every 16th level and 0.5 only.
        foreign_probabilities: read inputs without predict's record (as
            :func:`~nnunet_vasculature.io.volumes.open_probabilities`).

    Returns:
        The decision and its evidence (postprocessing.json without its competition record); the ``mean_score*``
        and curve entries are of the objective (``mean_surface_dice*`` repeat them when it is ``nsd0``).
    """
    from nnunet_vasculature.io.volumes import open_labels, open_probabilities
    from nnunet_vasculature.metrics.hosts import OBJECTIVES, check_metrics
    from nnunet_vasculature.metrics.surface_dice import sweep_with_levels
    from nnunet_vasculature.postprocess.morphology import level_histogram
    from nnunet_vasculature.postprocess.sennet_metrics import ObjectiveScorer, objective_curve
    check_metrics([objective], OBJECTIVES)
    if by_fraction and objective not in ("nsd0", "dice"):
        raise UserError(f"--by_fraction needs a score at every level: tune it with --objective nsd0 or dice, "
                        f"not {objective}")
    if len(prob_paths) != len(label_paths):
        raise UserError(f"{len(prob_paths)} probability volumes but {len(label_paths)} label volumes")
    curves, kidneys, pairs, hists = [], [], [], []
    for p_path, l_path in zip(prob_paths, label_paths):
        prob, attrs = open_probabilities(p_path, foreign_probabilities)
        labels = open_labels(l_path)
        _check_shapes(prob, labels, p_path, l_path)
        if not any(np.asarray(labels[z:z + BLOCK]).any() for z in range(0, labels.shape[0], BLOCK)):
            raise UserError(f"{l_path}: label volume is empty; it cannot rank thresholds")
        name = kidney_of(p_path, attrs)
        if objective == "nsd0":       # one read for the 256 thresholds and the level counts
            print(f"sweeping 256 thresholds on {name} {tuple(prob.shape)}")
            curve, hist = sweep_with_levels(prob, labels, BLOCK, WORKERS)
            curves.append(curve)
            hists.append(hist)
        else:
            curves.append(objective_curve(prob, labels, objective, name))
            hists.append(level_histogram(prob, BLOCK))
        kidneys.append(name)
        pairs.append((prob, labels))
    mean = np.mean(curves, axis=0)
    best = int(np.nanargmax(mean))

    def scorer(plane_shape: tuple[int, ...]) -> ObjectiveScorer:
        return ObjectiveScorer(plane_shape, objective)
    fraction, fraction_score, fraction_levels = best_fraction(curves, hists)
    levels = fraction_levels if by_fraction else [best] * len(pairs)
    closing_scores = {0: fraction_score if by_fraction else float(mean[best])}
    for radius in closing_radii:
        print(f"testing a closing of radius {radius}")
        closing_scores[int(radius)] = float(np.mean([
            option_scores(prob, labels, level, [0], int(radius), scorer)[0]
            for (prob, labels), level in zip(pairs, levels)]))
    radius = best_option(closing_scores)
    cc_scores = {0: closing_scores[radius]}
    if cc_candidates:
        totals = np.zeros(len(cc_candidates))
        for (prob, labels), name, level in zip(pairs, kidneys, levels):
            print(f"testing component removal on {name}")
            totals += option_scores(prob, labels, level, list(cc_candidates), radius, scorer)
        cc_scores.update({int(s): float(t / len(pairs)) for s, t in zip(cc_candidates, totals)})
    min_size = best_option(cc_scores)
    def listed(curve: np.ndarray) -> list:
        return [None if np.isnan(x) else float(x) for x in curve]
    rule = MaskRule(COMPETITION, best, int(min_size), int(radius), by_fraction, fraction)
    result = {
        **{k: v for k, v in rule.to_json().items() if k != "competition"},
        "objective": objective,
        "mean_score": cc_scores[min_size],
        "mean_score_at_0.5": float(mean[LEVEL_HALF]),
        "mean_score_at_threshold": float(mean[best]),
        "mean_score_at_fraction": fraction_score,
        "kidneys": kidneys,
        "per_kidney_levels": {k: int(lv) for k, lv in zip(kidneys, levels)},
        "per_kidney_at_threshold": {k: float(c[lv]) for k, c, lv in zip(kidneys, curves, levels)},
        "per_kidney_at_0.5": {k: float(c[LEVEL_HALF]) for k, c in zip(kidneys, curves)},
        "closing_scores": {str(k): v for k, v in closing_scores.items()},
        "component_removal_scores": {str(k): v for k, v in cc_scores.items()},
        "curve_u8_levels": f"entry k: mean {objective} of probability_u8 >= k (null: level not scored)",
        "mean_curve": listed(mean),
        "per_kidney_curves": {k: listed(c) for k, c in zip(kidneys, curves)},
    }
    if objective == "nsd0":          # the names files written before --objective carry
        result.update({f"mean_surface_dice{k[len('mean_score'):]}": v for k, v in list(result.items())
                       if k.startswith("mean_score")})
    return result


def load_mask_rule(path: Path | str) -> MaskRule:
    """SenNet's decision from a postprocessing.json (another competition's file is refused).

    Args:
        path: the file ``tune`` wrote (files without a competition entry are read when their schema is SenNet's).

    Returns:
        The rule; a one-line UserError naming the file for a malformed or contradictory one.
    """
    return read_mask_rule(path, COMPETITION)


def load_postprocessing(path: Path | str) -> dict:
    """SenNet's decision as the dict this function returned before :class:`MaskRule` (for scripts; the
    commands use :func:`load_mask_rule`).

    Args:
        path: the file ``tune`` wrote.

    Returns:
        ``threshold_u8``, ``min_component_voxels``, ``threshold_mode``, ``vessel_fraction``, ``closing_radius``.
    """
    return load_mask_rule(path).applied()


def plot_curve(result: dict, out_png: Path) -> None:
    """Surface Dice versus threshold of a ``determine`` result (per kidney and mean)."""
    cc = result["min_component_voxels"]
    notes = [f"{result['mean_score']:.4f} without components < {cc} voxels"] if cc else []
    label = {"nsd0": "surface Dice (tolerance 0)", "nsd1": "surface Dice (tolerance 1)", "cldice": "clDice",
             "dice": "Dice"}[result.get("objective", "nsd0")]
    nan = float("nan")
    plot_curves({k: [nan if x is None else x for x in c] for k, c in result["per_kidney_curves"].items()},
                [nan if x is None else x for x in result["mean_curve"]], result["threshold_u8"], label, out_png, notes)
