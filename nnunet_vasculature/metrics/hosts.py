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
(slabs with a halo, ``metrics.skeleton``) and the surface distances (k-d trees of a few slabs, ``surface_distances``)
work from there: each core of ``skeleton_core`` planes is one independent task (both skeletons, its ASSD target
slabs, its cube layers of both surface Dice values), run in a loop, in threads or on a dask cluster, and the tasks'
integer counts and distance sums are reduced in slab order (the values do not depend on where the tasks ran).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.volumes import ZSliceable
from nnunet_vasculature.metrics.base import METRICS, OBJECTIVES  # noqa: F401 (re-exported)
from nnunet_vasculature.metrics.packed_volume import PackedVolume
from nnunet_vasculature.metrics.skeleton import (
    DEFAULT_CORE,
    DEFAULT_HALO,
    PlaneRadii,
    cldice_counts,
    cldice_from_counts,
    core_ranges,
    packed_skeleton,
    skeleton_hits,
)
from nnunet_vasculature.metrics.surface_dice import SurfaceDiceAccumulator, surface_dice_sweep
from nnunet_vasculature.metrics.surface_distances import (
    ToleranceOneAccumulator,
    areas,
    assd_from_slabs,
    slab_distances,
    surface_counts,
    tolerance_one_score,
)

BLOCK = 16
ASSD_SLAB = 32


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
                  progress: bool = False, workers: int = 1, scheduler: Any = None) -> dict[str, float]:
    """The hosts' metrics of one kidney, streamed over z.

    With ``cldice`` or ``assd`` both masks are read once into bit-packed memory, then every slab of
    ``skeleton_core`` planes is one task (its skeletons with their halo, its share of the surface distances and of
    both surface Dice counts); the tasks are independent and their integer counts and distance sums are reduced in
    slab order, so the values do not depend on ``workers`` or on where the tasks ran.

    Args:
        pred, gt: (slice, H, W) volumes of equal shape, non-zero = foreground: numpy or zarr arrays, ``SliceStack``
            or anything with ``.shape`` and ``vol[z0:z1]``; each is read once, ``block`` planes at a time.
        metrics: names from :data:`METRICS` (``nsd0 nsd1 cldice assd dice``).
        where: the kidney's name for error messages.
        block: planes read at a time.
        skeleton_core, skeleton_halo: slab geometry of the clDice skeleton (see ``metrics.skeleton``).
        progress: show tqdm bars.
        workers: slab tasks run at once in this process (dask's threaded scheduler; 1: a plain loop).
        scheduler: the address of a dask.distributed scheduler (``tcp://host:8786``) or a ``distributed.Client``
            to run the slab tasks on instead (``workers`` must then be 1).
    Returns:
        ``{name: value}`` in the order asked; NaN/inf as the module docstring defines.
    Raises:
        UserError: unknown metric name, shapes that differ, not 3D, fewer than 2 slices, workers < 1, workers
            with a scheduler, a scheduler that cannot be reached.
    """
    names = check_metrics(metrics)
    shape = _check_volumes(pred, gt, where)
    if not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    if scheduler is not None and workers != 1:
        raise UserError("give --workers N (threads here) or --scheduler ADDRESS (a dask cluster), not both")
    depth, plane = shape[0], shape[1:]
    need_packed = "cldice" in names or "assd" in names
    # without clDice and ASSD, both surface Dice values are accumulated while reading; with them, in the tasks
    nsd0 = SurfaceDiceAccumulator(plane) if "nsd0" in names and not need_packed else None
    nsd1 = ToleranceOneAccumulator(plane) if "nsd1" in names and not need_packed else None
    packed_p = PackedVolume(shape) if need_packed else None
    packed_g = PackedVolume(shape) if need_packed else None
    radii = (PlaneRadii(packed_p), PlaneRadii(packed_g)) if "cldice" in names else None
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
        if radii is not None:
            radii[0].record(z0, p)
            radii[1].record(z0, g)
        bar.update(len(g))
    bar.close()
    out: dict[str, float] = {"dice": dice_from_counts(inter, total_p, total_g)}
    if need_packed:
        jobs = slab_jobs(shape, names, skeleton_core, skeleton_halo, radii)
        with tqdm(total=len(jobs), desc=f"{where}: slabs", unit="slab", disable=not progress) as slab_bar:
            parts = run_slab_jobs(packed_p, packed_g, jobs, workers, scheduler, slab_bar.update)
        out.update(reduce_slabs(parts, packed_p, packed_g, names))
    else:
        out.update({"nsd0": nsd0.score() if nsd0 else None, "nsd1": nsd1.score() if nsd1 else None})
    return {name: out[name] for name in names}


@dataclass(frozen=True)
class SlabJob:
    """One task of :func:`kidney_scores`: the metrics' shares of core planes ``z0 .. z1`` of a ``depth``-plane
    kidney. ``skeletons``: the planes ``(lo, hi)`` skeletonised for the prediction and for the labels (None: no
    clDice); ``assd_slabs``: the ASSD target slabs ``(first, stop)`` of ``ASSD_SLAB`` planes (None: no ASSD)."""
    z0: int
    z1: int
    depth: int
    surface: tuple[str, ...]
    skeletons: tuple[tuple[int, int], tuple[int, int]] | None
    assd_slabs: tuple[int, int] | None

    def planes(self) -> tuple[int, int]:
        """The planes the task reads (both masks): its core, a margin of 2, the skeletons' halos, the ASSD
        windows.

        Returns:
            ``(lo, hi)``, clipped to the kidney.
        """
        lo, hi = [self.z0 - 2], [self.z1 + 2]
        if self.skeletons:
            lo += [r[0] for r in self.skeletons]
            hi += [r[1] for r in self.skeletons]
        if self.assd_slabs:
            lo.append((self.assd_slabs[0] - 1) * ASSD_SLAB - 1)
            hi.append((self.assd_slabs[1] + 1) * ASSD_SLAB + 1)
        return max(min(lo), 0), min(max(hi), self.depth)


def slab_jobs(shape: tuple[int, int, int], names: Sequence[str], core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO,
              radii: tuple[PlaneRadii, PlaneRadii] | None = None) -> list[SlabJob]:
    """The tasks of a kidney: one per core of ``core`` planes.

    Args:
        shape: the kidney's shape.
        names: the metrics asked for.
        core, halo: the clDice slab geometry (``metrics.skeleton``).
        radii: the prediction's and the labels' plane radius bounds (the halos follow the thickness); needed for
            clDice.
    Returns:
        the jobs, in z order.
    """
    depth = shape[0]
    surface = tuple(n for n in ("nsd0", "nsd1") if n in names)
    ranges = [core_ranges(depth, core, halo, r) for r in radii] if "cldice" in names else None
    jobs = []
    for i, z0 in enumerate(range(0, depth, core)):
        z1 = min(z0 + core, depth)
        skeletons = (ranges[0][i][2:], ranges[1][i][2:]) if ranges else None
        first, stop = -(-z0 // ASSD_SLAB), -(-z1 // ASSD_SLAB)      # target slabs starting in z0 .. z1
        assd = (first, stop) if "assd" in names and stop > first else None
        jobs.append(SlabJob(z0, z1, depth, surface, skeletons, assd))
    return jobs


def slab_task(pred: PackedVolume, gt: PackedVolume, job: SlabJob) -> dict[str, Any]:
    """What one slab contributes to each metric (the task a dask worker runs).

    Args:
        pred, gt: the packed masks or windows of them holding ``job.planes()``.
        job: the slab.
    Returns:
        ``{"cldice": counts (4,), "assd": per target slab shares, "nsd0": pair histogram, "nsd1": code counts}``,
        for the metrics of the job.
    """
    out: dict[str, Any] = {}
    if job.skeletons:
        (lo_p, hi_p), (lo_g, hi_g) = job.skeletons
        out["cldice"] = np.array([*skeleton_hits(pred, gt, job.z0, job.z1, lo_p, hi_p),
                                  *skeleton_hits(gt, pred, job.z0, job.z1, lo_g, hi_g)], dtype=np.int64)
    if job.assd_slabs:
        out["assd"] = slab_distances(pred, gt, range(*job.assd_slabs), ASSD_SLAB)
    if job.surface:
        out.update(surface_counts(pred, gt, job.z0, job.z1, job.surface))
    return out


def run_slab_jobs(pred: PackedVolume, gt: PackedVolume, jobs: list[SlabJob], workers: int = 1,
                  scheduler: Any = None, progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Run :func:`slab_task` for every job: a plain loop (``workers=1``), dask's threaded scheduler, or a
    dask.distributed cluster (``scheduler``), the masks' windows scattered to it.

    Args:
        pred, gt: the whole packed masks.
        jobs: from :func:`slab_jobs`.
        workers: threads (1: no dask).
        scheduler: address of a dask.distributed scheduler, or a ``distributed.Client``.
        progress: called with 1 per finished task.
    Returns:
        the tasks' results, in the order of ``jobs``.
    """
    progress = progress or (lambda n: None)
    windows = [job.planes() for job in jobs]
    if workers == 1 and scheduler is None:
        out = []
        for job, (lo, hi) in zip(jobs, windows):
            out.append(slab_task(pred.window(lo, hi), gt.window(lo, hi), job))
            progress(1)
        return out
    import dask
    if scheduler is None:
        from dask.callbacks import Callback
        tasks = slab_graph(pred, gt, jobs)
        done = Callback(posttask=lambda key, *rest: progress(1) if str(key).startswith("slab_task") else None)
        with done:
            return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
    from distributed import Client, as_completed
    try:
        client = scheduler if isinstance(scheduler, Client) else Client(scheduler, timeout="30s")
    except OSError as e:
        raise UserError(f"cannot reach the dask scheduler {scheduler}: {e}") from None
    try:
        tasks = slab_graph(pred, gt, jobs, lambda window: client.scatter(window, hash=False))
        futures = client.compute(tasks)
        for _ in as_completed(futures):
            progress(1)
        return client.gather(futures)
    finally:
        if client is not scheduler:
            client.close()


def slab_graph(pred: PackedVolume, gt: PackedVolume, jobs: list[SlabJob],
               place: Callable[[PackedVolume], Any] = lambda window: window) -> list[Any]:
    """One ``dask.delayed`` :func:`slab_task` per job, each given the windows of the masks it reads.

    Args:
        pred, gt: the whole packed masks.
        jobs: from :func:`slab_jobs`.
        place: turns a window into the task's argument (e.g. ``client.scatter``).
    Returns:
        the delayed tasks, in the order of ``jobs``.
    """
    import dask
    task = dask.delayed(slab_task, pure=False)
    return [task(place(pred.window(*job.planes())), place(gt.window(*job.planes())), job) for job in jobs]


def reduce_slabs(parts: list[dict[str, Any]], pred: PackedVolume, gt: PackedVolume,
                 names: Sequence[str]) -> dict[str, float]:
    """The metrics from the slab tasks' results (in slab order): integer counts summed, distance sums added in
    slab order, then the ASSD's far voxels searched over the whole masks.

    Args:
        parts: :func:`slab_task` results, in z order.
        pred, gt: the whole packed masks.
        names: the metrics asked for.
    Returns:
        ``{name: value}`` for nsd0, nsd1, cldice and assd among ``names``.
    """
    out = {}
    if "nsd0" in names:
        nsd0 = SurfaceDiceAccumulator((1, 1))
        nsd0.hist, nsd0.closed = sum(part["nsd0"] for part in parts), True
        out["nsd0"] = nsd0.score()
    if "nsd1" in names:
        out["nsd1"] = tolerance_one_score(areas(sum(part["nsd1"] for part in parts)))
    if "cldice" in names:
        out["cldice"] = cldice_from_counts(tuple(int(c) for c in sum(part["cldice"] for part in parts)))
    if "assd" in names:
        out["assd"] = assd_from_slabs(pred, gt, [share for part in parts for share in part.get("assd", [])],
                                      ASSD_SLAB)
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
           "scores_document", "write_scores_json", "objective_scores", "dice_from_counts", "SlabJob", "slab_jobs",
           "slab_task", "slab_graph", "run_slab_jobs", "reduce_slabs"]
