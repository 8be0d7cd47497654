"""The five metrics the SenNet + HOA hosts report per kidney (DOMAIN §12), streamed over z-slabs in bounded memory.

Names and definitions (spacing 1 voxel, volumes (slice, H, W)):

* ``nsd0``, ``nsd1``: Kaggle's surface Dice at tolerance 0 / 1 voxel (DeepMind ``surface-distance``). Both masks
  empty: NaN; one empty: 0.
* ``cldice``: 2 Tprec Tsens / (Tprec + Tsens), Tprec = |S(pred) & gt| / |S(pred)|, Tsens = |S(gt) & pred| / |S(gt)|,
  S = scikit-image's 3D Lee skeleton. Any 0/0 (an empty mask, or Tprec = Tsens = 0): NaN.
* ``assd``: MONAI ``compute_average_surface_distance(symmetric=True)``: 6-connected edges, exact Euclidean distance
  to the other mask's nearest edge voxel, both directions pooled into one mean. One mask empty: inf; both: NaN.
* ``dice``: 2 |P & G| / (|P| + |G|) (MONAI ``compute_dice``); empty truth: NaN (whatever the prediction).

Memory: one streaming read of both volumes (Dice, both surface Dice values); when clDice or ASSD is asked for, both
masks are also kept bit-packed (1 bit per voxel, 0.34 GB each for a 2279 x 1303 x 912 kidney) and the skeleton
(slabs with a halo, ``skeleton_slabs``) and the surface distances (k-d trees of a few slabs, ``surface_distances``)
work from there.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.volumes import ZSliceable
from nnunet_vasculature.postprocess.packed_volume import PackedVolume
from nnunet_vasculature.postprocess.skeleton_slabs import (
    DEFAULT_CORE,
    DEFAULT_HALO,
    cldice_counts,
    cldice_from_counts,
    packed_skeleton,
)
from nnunet_vasculature.postprocess.surface_dice import SurfaceDiceAccumulator, surface_dice_sweep
from nnunet_vasculature.postprocess.surface_distances import (
    ToleranceOneAccumulator,
    average_symmetric_surface_distance,
)

METRICS = ("nsd0", "nsd1", "cldice", "assd", "dice")
OBJECTIVES = ("nsd0", "nsd1", "cldice", "dice")
BLOCK = 16


def check_metrics(metrics: Sequence[str], allowed: Sequence[str] = METRICS) -> list[str]:
    """The requested metric names, de-duplicated in order.

    Args:
        metrics: names such as ``["nsd0", "assd"]``.
        allowed: the names accepted.
    Returns:
        the names as a list.
    Raises:
        UserError: one line naming an unknown metric and the known ones.
    """
    out: list[str] = []
    for m in metrics:
        if m not in allowed:
            raise UserError(f"unknown metric {m!r}; choose from {', '.join(allowed)}")
        if m not in out:
            out.append(m)
    if not out:
        raise UserError(f"no metric named; choose from {', '.join(allowed)}")
    return out


def _check_volumes(pred: ZSliceable, gt: ZSliceable, where: str) -> tuple[int, int, int]:
    for vol, what in ((pred, "prediction"), (gt, "labels")):
        if isinstance(vol, (str, Path)) or not hasattr(vol, "shape"):
            raise TypeError(f"{what}: expected an array or a z-sliceable volume, got {type(vol).__name__}")
    if tuple(pred.shape) != tuple(gt.shape):
        raise UserError(f"{where}: prediction of shape {tuple(pred.shape)} but labels of shape {tuple(gt.shape)}")
    if len(gt.shape) != 3:
        raise UserError(f"{where}: expected 3D volumes (slice, H, W), got shape {tuple(gt.shape)}")
    if gt.shape[0] < 2:
        raise UserError(f"{where}: a kidney of {gt.shape[0]} slice(s); the 3D metrics need at least 2")
    return tuple(int(s) for s in gt.shape)


def dice_from_counts(intersection: int, pred_total: int, gt_total: int) -> float:
    """2 |P & G| / (|P| + |G|), NaN when the truth is empty (MONAI ``compute_dice``, ``ignore_empty=True``).

    Args:
        intersection, pred_total, gt_total: voxel counts.
    Returns:
        Dice.
    """
    return float("nan") if gt_total == 0 else 2.0 * intersection / (pred_total + gt_total)


def kidney_scores(pred: ZSliceable, gt: ZSliceable, metrics: Sequence[str] = ("nsd0",), *, where: str = "kidney",
                  block: int = BLOCK, skeleton_core: int = DEFAULT_CORE, skeleton_halo: int = DEFAULT_HALO,
                  progress: bool = False) -> dict[str, float]:
    """The hosts' metrics of one kidney, streamed over z.

    Args:
        pred, gt: (slice, H, W) volumes of equal shape, non-zero = foreground: numpy or zarr arrays, ``SliceStack``
            or anything with ``.shape`` and ``vol[z0:z1]``; each is read once, ``block`` planes at a time.
        metrics: names from :data:`METRICS` (``nsd0 nsd1 cldice assd dice``).
        where: the kidney's name for error messages.
        block: planes read at a time.
        skeleton_core, skeleton_halo: slab geometry of the clDice skeleton (see ``skeleton_slabs``).
        progress: show tqdm bars.
    Returns:
        ``{name: value}`` in the order asked; NaN/inf as the module docstring defines.
    Raises:
        UserError: unknown metric name, shapes that differ, not 3D, or fewer than 2 slices.
    """
    names = check_metrics(metrics)
    shape = _check_volumes(pred, gt, where)
    depth, plane = shape[0], shape[1:]
    nsd0 = SurfaceDiceAccumulator(plane) if "nsd0" in names else None
    nsd1 = ToleranceOneAccumulator(plane) if "nsd1" in names else None
    need_packed = "cldice" in names or "assd" in names
    packed_p = PackedVolume(shape) if need_packed else None
    packed_g = PackedVolume(shape) if need_packed else None
    inter = total_p = total_g = 0
    bar = tqdm(total=depth, desc=f"{where}: reading", unit="slice", disable=not progress)
    for z0 in range(0, depth, block):
        p, g = np.asarray(pred[z0:z0 + block]) != 0, np.asarray(gt[z0:z0 + block]) != 0
        if p.shape != g.shape or p.shape[1:] != plane:
            raise UserError(f"{where}: slices {z0}..{z0 + len(g) - 1} read as {p.shape} and {g.shape}")
        inter += int(np.count_nonzero(p & g))
        total_p += int(np.count_nonzero(p))
        total_g += int(np.count_nonzero(g))
        if nsd0 is not None:
            nsd0.add(p, g)
        if nsd1 is not None:
            nsd1.add(p, g)
        if need_packed:
            packed_p.write(z0, p)
            packed_g.write(z0, g)
        bar.update(len(g))
    bar.close()
    out: dict[str, float] = {}
    for name in names:
        if name == "nsd0":
            out[name] = nsd0.score()
        elif name == "nsd1":
            out[name] = nsd1.score()
        elif name == "dice":
            out[name] = dice_from_counts(inter, total_p, total_g)
        elif name == "cldice":
            with tqdm(total=2 * depth, desc=f"{where}: skeletons", unit="slice", disable=not progress) as sk_bar:
                counts = cldice_counts(packed_p, packed_g, skeleton_core, skeleton_halo, progress=sk_bar.update)
            out[name] = cldice_from_counts(counts)
        elif name == "assd":
            with tqdm(desc=f"{where}: surface distances", unit="slab", disable=not progress) as sd_bar:
                out[name] = average_symmetric_surface_distance(packed_p, packed_g, progress=sd_bar.update)
    return out


def mean_scores(per_kidney: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over kidneys of each metric, ignoring NaN (a kidney where the metric is undefined, e.g. empty truth);
    inf (ASSD with an empty mask) is kept, so the mean is inf; NaN when every kidney is NaN.

    Args:
        per_kidney: ``{kidney: {metric: value}}``.
    Returns:
        ``{metric: mean}``.
    """
    names: list[str] = []
    for scores in per_kidney.values():
        names += [n for n in scores if n not in names]
    out = {}
    for name in names:
        values = [v for s in per_kidney.values() if name in s and not math.isnan(v := float(s[name]))]
        out[name] = float(np.mean(values)) if values else float("nan")
    return out


def json_value(x: float) -> float | str | None:
    """A score as strict JSON allows it: NaN -> ``null``, +-inf -> ``"Infinity"`` / ``"-Infinity"``.

    Args:
        x: a score.
    Returns:
        the JSON-safe value (``float("Infinity")`` reads the strings back in Python).
    """
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def scores_document(per_kidney: dict[str, dict[str, float]]) -> dict:
    """``{"<kidney>": {"nsd0": ...}, ..., "mean": {...}}`` with JSON-safe values (:func:`json_value`).

    Args:
        per_kidney: ``{kidney: {metric: value}}``; a kidney may not be called ``mean``.
    Returns:
        the document.
    """
    if "mean" in per_kidney:
        raise UserError("a kidney is named 'mean', which the scores file uses for the mean over kidneys")
    doc = {k: {m: json_value(v) for m, v in s.items()} for k, s in per_kidney.items()}
    doc["mean"] = {m: json_value(v) for m, v in mean_scores(per_kidney).items()}
    return doc


def write_scores_json(per_kidney: dict[str, dict[str, float]], path: Path | str) -> Path:
    """Write :func:`scores_document` to ``path`` atomically (strict JSON).

    Args:
        per_kidney: ``{kidney: {metric: value}}``.
        path: output file.
    Returns:
        the path written.
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(scores_document(per_kidney), indent=2, allow_nan=False) + "\n")
    return path


def objective_scores(prob_u8: ZSliceable, gt: ZSliceable, objective: str = "nsd0",
                     levels: Sequence[int] | None = None, *, where: str = "kidney", block: int = BLOCK,
                     skeleton_core: int = DEFAULT_CORE, skeleton_halo: int = DEFAULT_HALO,
                     progress: bool = False) -> dict[int, float]:
    """Score of ``prob_u8 >= level`` for each candidate level, for tuning by another metric than surface Dice.

    ``nsd0`` and ``dice`` cost one pass for all 256 levels (``surface_dice_sweep``; a histogram of probabilities
    inside and outside the labels), so ``levels=None`` means every level 0..255 for them. ``nsd1`` and ``cldice``
    are computed level by level (``nsd1``: one pass over the volume with one accumulator per level; ``cldice``: the
    labels' skeleton once, then one skeleton of the prediction per level), so give them a coarse grid; ``None``
    means every 16th level (8, 24, ..., 248) for them.

    Args:
        prob_u8: uint8 probabilities (slice, H, W).
        gt: labels of the same shape.
        objective: one of :data:`OBJECTIVES`.
        levels: candidate levels 0..255.
        where, block, skeleton_core, skeleton_halo, progress: as for :func:`kidney_scores`.
    Returns:
        ``{level: score}``; NaN where the score is undefined (e.g. empty truth) — except ``nsd0``, which follows
        ``surface_dice_sweep`` and gives 0 where both masks are empty.
    Raises:
        UserError: unknown objective, a level outside 0..255, shapes that differ, fewer than 2 slices.
    """
    check_metrics([objective], OBJECTIVES)
    shape = _check_volumes(prob_u8, gt, where)
    dense = objective in ("nsd0", "dice")
    if levels is None:
        levels = range(256) if dense else range(8, 256, 16)
    levels = sorted({int(lv) for lv in levels})
    if not levels or levels[0] < 0 or levels[-1] > 255:
        raise UserError(f"{where}: candidate levels must lie in 0..255, got {levels[:3]}...{levels[-3:]}")
    if objective == "nsd0":
        curve = surface_dice_sweep(prob_u8, gt, block=block)
        return {lv: float(curve[lv]) for lv in levels}
    if objective == "dice":
        return _dice_sweep(prob_u8, gt, levels, block)
    if objective == "nsd1":
        accs = {lv: ToleranceOneAccumulator(shape[1:]) for lv in levels}
        for z0 in tqdm(range(0, shape[0], block), desc=f"{where}: nsd1 per level", disable=not progress):
            p, g = _u8(prob_u8[z0:z0 + block], where, z0), np.asarray(gt[z0:z0 + block]) != 0
            for lv, acc in accs.items():
                acc.add(p >= lv, g)
        return {lv: acc.score() for lv, acc in accs.items()}
    packed_g = PackedVolume(shape)
    for z0 in range(0, shape[0], block):
        packed_g.write(z0, np.asarray(gt[z0:z0 + block]) != 0)
    gt_skeleton = packed_skeleton(packed_g, skeleton_core, skeleton_halo)
    out = {}
    for lv in tqdm(levels, desc=f"{where}: cldice per level", disable=not progress):
        packed_p = PackedVolume(shape)
        for z0 in range(0, shape[0], block):
            packed_p.write(z0, _u8(prob_u8[z0:z0 + block], where, z0) >= lv)
        out[lv] = cldice_from_counts(cldice_counts(packed_p, packed_g, skeleton_core, skeleton_halo,
                                                   gt_skeleton=gt_skeleton))
    return out


def _u8(block: object, where: str, z0: int) -> np.ndarray:
    block = np.asarray(block)
    if block.dtype != np.uint8:
        raise UserError(f"{where}: probabilities must be uint8 0..255 (slices from {z0}), got {block.dtype}")
    return block


def _dice_sweep(prob_u8: ZSliceable, gt: ZSliceable, levels: list[int], block: int) -> dict[int, float]:
    """Dice of ``prob >= k`` for the given levels from one histogram pass."""
    hist_in, hist_all = np.zeros(256, np.int64), np.zeros(256, np.int64)
    for z0 in range(0, gt.shape[0], block):
        p, g = _u8(prob_u8[z0:z0 + block], "probabilities", z0), np.asarray(gt[z0:z0 + block]) != 0
        hist_all += np.bincount(p.ravel(), minlength=256)
        hist_in += np.bincount(p[g], minlength=256)
    at_least_all = np.cumsum(hist_all[::-1])[::-1]        # voxels with prob >= k
    at_least_in = np.cumsum(hist_in[::-1])[::-1]
    total_g = int(hist_in.sum())
    return {lv: dice_from_counts(int(at_least_in[lv]), int(at_least_all[lv]), total_g) for lv in levels}


__all__ = ["METRICS", "OBJECTIVES", "check_metrics", "kidney_scores", "mean_scores", "json_value",
           "scores_document", "write_scores_json", "objective_scores", "dice_from_counts"]
