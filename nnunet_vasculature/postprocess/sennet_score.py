"""SenNet + HOA ``score``: Kaggle's surface Dice at tolerance 0 per kidney (slices stacked in slice order, spacing
1), averaged over kidneys, of a submission CSV against a solution CSV or of a predicted mask (or probabilities
with postprocessing.json) against a kidney's labels; :func:`kidney_scorer` is the one place that accumulates it.
The hosts' other metrics (:mod:`nnunet_vasculature.metrics.hosts`) per kidney on request.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.rle import rle_decode
from nnunet_vasculature.io.sennet import split_slice_id
from nnunet_vasculature.io.tables import read_table
from nnunet_vasculature.io.volumes import open_labels, open_probabilities
from nnunet_vasculature.postprocess.sennet_tune import COMPETITION, load_mask_rule
from nnunet_vasculature.postprocess.tune import BLOCK, masks

if TYPE_CHECKING:      # the metrics (scipy, scikit-image) are imported by the functions that compute them
    from nnunet_vasculature.metrics.surface_dice import SurfaceDiceAccumulator


def kidney_scorer(plane_shape: tuple[int, int]) -> SurfaceDiceAccumulator:
    """The per-kidney score, fed block by block (``add(pred_block, gt_block)``, then ``score()``): Kaggle's
    surface Dice at tolerance 0. Every score of SenNet's post-processing (score, tune's closing and component
    options) is one of these.

    Args:
        plane_shape: (height, width) of the kidney's slices.

    Returns:
        A fresh accumulator.
    """
    from nnunet_vasculature.metrics.surface_dice import SurfaceDiceAccumulator
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


def _csv_kidneys(solution: Path, submission: Path) -> dict[str, tuple[list[dict], tuple[int, int], dict[str, str]]]:
    """Solution rows grouped by kidney in slice order, with the kidney's slice size and the submission's RLEs.
    Every solution row's size is read (a kidney whose rows disagree is refused), a repeated id in either file
    is refused, an id of the solution missing from the submission is refused."""
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
    out = {}
    for kidney, rows in kidneys.items():
        rows.sort(key=lambda t: t[0])
        shape, first_line = rows[0][2], rows[0][3]
        odd = next((t for t in rows if t[2] != shape), None)
        if odd is not None:
            raise UserError(f"{solution}:{odd[3]}: slice {odd[1]['id']} is {odd[2][1]} x {odd[2][0]} (width x "
                            f"height), line {first_line} of the same kidney {shape[1]} x {shape[0]}")
        out[kidney] = ([r for _, r, _, _ in rows], shape, sub)
    return out


def _decoded(rows: list[dict], shape: tuple[int, int], rles: dict[str, str] | None, path: Path) -> Iterator[np.ndarray]:
    """One side of a kidney's rows decoded slice by slice: the submission's RLEs (``rles``) or the solution's."""
    for r in rows:
        try:
            yield rle_decode(rles[r["id"]] if rles is not None else r["rle"], shape)[None]
        except ValueError as e:
            raise UserError(f"{path}: id {r['id']}: {e}") from None


def score_csv(solution: Path, submission: Path) -> dict[str, float]:
    """Per-kidney score of a submission (``id,rle``) against a solution (``id,rle,width,height``), as the official
    metric groups it (see :func:`_csv_kidneys` for what is refused).

    Args:
        solution: the solution CSV.
        submission: the submission CSV.

    Returns:
        Score per kidney (NaN where labels and prediction are both empty).
    """
    return {kidney: score_blocks(zip(_decoded(rows, shape, sub, submission), _decoded(rows, shape, None, solution)),
                                 shape)
            for kidney, (rows, shape, sub) in _csv_kidneys(solution, submission).items()}


def score_csv_metrics(solution: Path, submission: Path, metrics: Sequence[str], workers: int = 1,
                      scheduler: str | None = None) -> dict[str, dict[str, float]]:
    """The hosts' metrics (:mod:`nnunet_vasculature.metrics.hosts`) per kidney of a submission against a solution.

    Args:
        solution: the solution CSV.
        submission: the submission CSV.
        metrics: names among ``nsd0 nsd1 cldice assd dice``.
        workers, scheduler: as for :func:`nnunet_vasculature.metrics.hosts.kidney_scores` (slab tasks on N threads
            or on the dask cluster at an address).

    Returns:
        ``{kidney: {metric: value}}``.
    """
    from nnunet_vasculature.metrics.hosts import kidney_scores
    from nnunet_vasculature.postprocess.sennet_metrics import BlockStream
    out = {}
    for kidney, (rows, shape, sub) in _csv_kidneys(solution, submission).items():
        volume = (len(rows), *shape)
        out[kidney] = kidney_scores(BlockStream(volume, _decoded(rows, shape, sub, submission)),
                                    BlockStream(volume, _decoded(rows, shape, None, solution)), metrics,
                                    where=kidney, progress=True, workers=workers, scheduler=scheduler)
    return out


def kidney_name(labels: Path) -> str:
    """``.../kidney_1_dense/labels`` and ``.../kidney_1_dense`` both name kidney_1_dense."""
    return labels.parent.name if labels.name == "labels" else labels.name.split(".")[0]


def score_volumes(labels: Path, pred: Path, pp_path: Path | None = None, metrics: Sequence[str] | None = None,
                  workers: int = 1, scheduler: str | None = None, foreign_probabilities: bool = False) -> dict:
    """Score of a predicted mask (slice folder, 3D file) or of probabilities turned into a mask with ``pp_path``.

    Args:
        labels: the kidney's labels.
        pred: the mask, or probabilities when ``pp_path`` is given.
        pp_path: postprocessing.json.
        metrics: the hosts' metrics to compute (None: the competition's surface Dice alone).
        workers, scheduler: with ``metrics``, as for :func:`nnunet_vasculature.metrics.hosts.kidney_scores`.
        foreign_probabilities: read probabilities without predict's record (as
            :func:`~nnunet_vasculature.io.volumes.open_probabilities`).

    Returns:
        ``{kidney: score}``, or ``{kidney: {metric: value}}`` with ``metrics``.
    """
    from nnunet_vasculature.metrics.hosts import kidney_scores
    from nnunet_vasculature.postprocess.sennet_metrics import BlockStream
    gt = open_labels(labels)
    if pp_path:
        prob, _ = open_probabilities(pred, foreign_probabilities)
        blocks = masks(prob, load_mask_rule(pp_path))
        shape = tuple(prob.shape)
    else:
        if Path(pred).suffix in (".zarr", ".npz") or any(p.suffix == ".zarr" for p in Path(pred).parents):
            raise UserError(f"{pred}: holds probabilities; pass -pp postprocessing.json to turn them into a mask")
        mask = open_labels(pred)
        shape = tuple(mask.shape)
        blocks = ((z, mask[z:z + BLOCK]) for z in range(0, shape[0], BLOCK))
    if shape != tuple(gt.shape):
        raise UserError(f"{pred}: shape {shape} differs from labels {labels} {tuple(gt.shape)}")
    name = kidney_name(Path(labels))
    if metrics is not None:
        return {name: kidney_scores(BlockStream(shape, (m for _, m in blocks)), gt, metrics, where=name,
                                    progress=True, workers=workers, scheduler=scheduler)}
    return {name: score_blocks(((m, gt[z0:z0 + len(m)]) for z0, m in blocks), gt.shape[1:])}


__all__ = ["kidney_scorer", "score_blocks", "split_id", "score_csv", "score_csv_metrics", "kidney_name",
           "score_volumes"]
