"""The hosts' five metrics (:mod:`nnunet_vasculature.metrics.hosts`) where SenNet's ``score`` and ``tune`` need them: a
push-fed per-kidney scorer for any objective (tune's closing and component options feed blocks in slice
order), a z-stream view of block generators (a post-processed mask, decoded RLE rows) that the streamed
metrics read once, and the per-level curve of an objective for the threshold choice."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from nnunet_vasculature.io.volumes import ZSliceable
from nnunet_vasculature.metrics.hosts import OBJECTIVES, check_metrics, dice_from_counts, objective_scores
from nnunet_vasculature.metrics.packed_volume import PackedVolume
from nnunet_vasculature.metrics.skeleton import cldice_counts, cldice_from_counts
from nnunet_vasculature.metrics.surface_dice import SurfaceDiceAccumulator
from nnunet_vasculature.metrics.surface_distances import ToleranceOneAccumulator

# tune's candidate levels for the objectives scored level by level: every 16th level and 0.5 itself
COARSE_LEVELS = sorted(set(range(8, 256, 16)) | {128})


class ObjectiveScorer:
    """One kidney's score for an objective, fed ``add(pred_block, gt_block)`` in slice order, then ``score()``.

    ``nsd0``/``nsd1``/``dice`` stream; ``cldice`` keeps both masks bit-packed (1 bit per voxel) until ``score``.
    """

    def __init__(self, plane_shape: tuple[int, int], objective: str = "nsd0"):
        check_metrics([objective], OBJECTIVES)
        self.objective, self.plane_shape = objective, tuple(plane_shape)
        self.stream = {"nsd0": SurfaceDiceAccumulator, "nsd1": ToleranceOneAccumulator}.get(objective)
        self.stream = self.stream(self.plane_shape) if self.stream else None
        self.counts = [0, 0, 0]                       # intersection, prediction, truth
        self.blocks: list[tuple[np.ndarray, np.ndarray, int]] = []

    def add(self, pred_block: np.ndarray, gt_block: np.ndarray) -> None:
        """Add consecutive planes (non-zero = foreground)."""
        pred, gt = np.asarray(pred_block) != 0, np.asarray(gt_block) != 0
        if self.stream is not None:
            self.stream.add(pred, gt)
        elif self.objective == "dice":
            self.counts[0] += int(np.count_nonzero(pred & gt))
            self.counts[1] += int(np.count_nonzero(pred))
            self.counts[2] += int(np.count_nonzero(gt))
        else:
            self.blocks.append((np.packbits(pred, axis=-1), np.packbits(gt, axis=-1), len(pred)))

    def score(self, empty_score: float = float("nan")) -> float:
        """The objective's value; ``empty_score`` where it is undefined (both masks empty)."""
        if self.stream is not None:
            return self.stream.score(empty_score)
        if self.objective == "dice":
            value = dice_from_counts(*self.counts)
        else:
            depth = sum(n for _, _, n in self.blocks)
            pred, gt = PackedVolume((depth, *self.plane_shape)), PackedVolume((depth, *self.plane_shape))
            z = 0
            width = self.plane_shape[1]
            for p, g, n in self.blocks:
                pred.write(z, np.unpackbits(p, axis=-1, count=width).astype(bool))
                gt.write(z, np.unpackbits(g, axis=-1, count=width).astype(bool))
                z += n
            value = cldice_from_counts(cldice_counts(pred, gt))
        return empty_score if np.isnan(value) else float(value)


class BlockStream:
    """A volume read once, front to back, from a generator of consecutive (B, H, W) blocks: ``stream[a:b]`` must
    start where the previous read ended (what the streamed metrics do); memory is one block."""

    def __init__(self, shape: tuple[int, int, int], blocks: Iterable[np.ndarray]):
        self.shape = tuple(shape)
        self._blocks: Iterator[np.ndarray] = iter(blocks)
        self._buffer = np.zeros((0, *self.shape[1:]), dtype=bool)
        self._position = 0

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop = sl.start or 0, min(sl.stop, self.shape[0])
        if start != self._position:
            raise RuntimeError(f"BlockStream read at {start}, expected {self._position} (front to back only)")
        while len(self._buffer) < stop - start:
            block = next(self._blocks, None)
            if block is None:
                raise RuntimeError(f"BlockStream ended at plane {self._position + len(self._buffer)}")
            self._buffer = np.concatenate([self._buffer, np.asarray(block) != 0])
        out, self._buffer = self._buffer[:stop - start], self._buffer[stop - start:]
        self._position = stop
        return out


def objective_curve(prob: ZSliceable, labels: ZSliceable, objective: str, where: str) -> np.ndarray:
    """Score of ``prob >= k`` for k = 0..255 (NaN at the levels an objective scored level by level skips).

    Args:
        prob: uint8 probabilities.
        labels: the truth.
        objective: one of ``nsd1 cldice dice`` (``nsd0`` has its one-pass sweep in ``surface_dice``).
        where: the kidney's name for messages.

    Returns:
        256 values.
    """
    levels = None if objective == "dice" else COARSE_LEVELS
    scores = objective_scores(prob, labels, objective, levels, where=where, progress=True)
    curve = np.full(256, np.nan)
    for level, value in scores.items():
        curve[level] = value
    return curve


__all__ = ["COARSE_LEVELS", "ObjectiveScorer", "BlockStream", "objective_curve"]
