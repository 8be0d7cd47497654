"""Test-time augmentation beyond nnU-Net's mirroring, and test-time up-scaling, for the streaming predictor.

Options (all off by default; off, the prediction is bitwise the one without this module):

- ``rotations``: each tile is also predicted rotated by 90°, 180° and 270° in its (y, x) plane (model
  axes), each of these mirrored by nnU-Net's TTA, rotated back and averaged with the unrotated one.
  Needs a patch that is square in-plane.
- ``permutations``: each tile is also predicted with its axes permuted (all 6 orders of z, y, x), each
  mirrored, permuted back and averaged. Needs a cubic patch and an isotropic configuration spacing.
- ``scale``: predict at the configuration's spacing divided by ``scale`` (the input is resampled to a
  finer grid, so structures look ``scale`` times larger to the network); the probabilities are
  resampled back to the input grid as usual. Costs about ``scale``³ the tiles and ``scale``² the
  row accumulator of :class:`~nnunet_vasculature.inference.streaming.StreamingPredictor`.

Every transform ``t`` of a tile is followed by nnU-Net's mirroring, so what is averaged is
``(m t)⁻¹ f(m t x)`` over every mirror ``m`` and transform ``t`` (logits, as nnU-Net's mirroring
averages them, before the tile's Gaussian weighting). Transforms whose mirrored sets are
the same (``t1 = m t2``) give the same average, so each such set is predicted once and weighted by how
many transforms fall into it: with mirroring of y and x (nnU-Net's default), a 180° rotation is a flip
of y and x, so the rotations cost 2x the network passes, not 4x, and the average is the same.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from nnunet_vasculature.errors import UserError

if TYPE_CHECKING:
    import torch

Step = tuple[tuple[int, int, int], tuple[int, ...]]    # spatial axis order, then spatial axes flipped
# 90° rotations in the (y, x) plane, as torch.rot90(x, k, dims=(y, x)) computes them
ROTATIONS: tuple[Step, ...] = (((0, 1, 2), ()), ((0, 2, 1), (1,)), ((0, 1, 2), (1, 2)), ((0, 2, 1), (2,)))
PERMUTATIONS: tuple[Step, ...] = tuple((p, ()) for p in itertools.permutations(range(3)))


def tta_options(rotations: bool = False, permutations: bool = False, scale: float = 1.0) -> dict:
    """The options that differ from the defaults, as stored in a probability store's ``source`` (and
    the distributed run's parameter hash): a run without them is recorded as before they existed."""
    out: dict = {}
    if rotations:
        out["tta_rotations"] = True
    if permutations:
        out["tta_permutations"] = True
    if float(scale) != 1.0:
        out["tta_scale"] = float(scale)
    return out


def check_scale(scale: float) -> float:
    if not 1.0 <= float(scale) <= 4.0:
        raise UserError(f"--tta_scale {scale}: give a factor from 1 (off) to 4")
    return float(scale)


@dataclass(frozen=True)
class Transform:
    """Steps applied in order to a (batch, channel, z, y, x) tile; each step permutes the spatial axes,
    then flips some of them."""
    steps: tuple[Step, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for perm, flips in self.steps:
            x = x.permute(0, 1, *(2 + p for p in perm))
            if flips:
                x = x.flip([2 + f for f in flips])
        return x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        for perm, flips in reversed(self.steps):
            if flips:
                x = x.flip([2 + f for f in flips])
            x = x.permute(0, 1, *(2 + perm.index(i) for i in range(3)))
        return x


class TileTTA:
    """The extra transforms of a tile, reduced to one per set of mirrored transforms, with weights.

    ``mirror_axes``: nnU-Net's mirroring axes (model axes, as ``nnUNetPredictor.allowed_mirroring_axes``)
    when mirroring is on, else None. ``where``: what a refusal names (the model folder)."""

    def __init__(self, patch: Sequence[int], spacing: Sequence[float], mirror_axes: Sequence[int] | None,
                 rotations: bool = False, permutations: bool = False, where: str = "model"):
        patch = tuple(int(p) for p in patch)
        if rotations and (len(patch) != 3 or patch[1] != patch[2]):
            raise UserError(f"{where}: --tta_rotations needs a patch square in (y, x); this one is {list(patch)}")
        if permutations and (len(set(patch)) != 1 or max(spacing) > min(spacing) * (1 + 1e-6)):
            raise UserError(f"{where}: --tta_permutations needs a cubic patch and isotropic spacing; this one has "
                            f"patch {list(patch)}, spacing {[round(float(s), 4) for s in spacing]}")
        rots = ROTATIONS if rotations else ROTATIONS[:1]
        perms = PERMUTATIONS if permutations else PERMUTATIONS[:1]
        every = [Transform((r, p)) for p in perms for r in rots]     # rotate, then permute; identity first
        mirrors = [c for i in range(4) for c in itertools.combinations(sorted(mirror_axes or ()), i)]
        groups: dict[bytes, list] = {}
        for t in every:
            key = _coset_key(t, mirrors)
            if key in groups:
                groups[key][1] += 1
            else:
                groups[key] = [t, 1]
        self.transforms: list[tuple[Transform, float]] = [(t, n / len(every)) for t, n in groups.values()]

    @property
    def passes(self) -> int:
        """Network passes per tile relative to mirroring alone."""
        return len(self.transforms)

    def __call__(self, predict: Callable[[torch.Tensor], torch.Tensor], tile: torch.Tensor) -> torch.Tensor:
        """Weighted average of ``t⁻¹(predict(t(tile)))``; just ``predict(tile)`` without extra transforms."""
        if len(self.transforms) == 1:
            return predict(tile)
        total = None
        for t, w in self.transforms:
            p = t.invert(predict(t.apply(tile).contiguous())) * w
            total = p if total is None else total + p
        return total


def _coset_key(t: Transform, mirrors: list[tuple[int, ...]]) -> bytes:
    """The same bytes for ``t1`` and ``t2`` exactly when ``t1 = m t2`` for a mirror ``m``: the smallest
    mirrored image of a probe with distinct values (a cube, so that every transform applies to it)."""
    import torch
    probe = t.apply(torch.arange(8).reshape(1, 1, 2, 2, 2))
    return min((probe.flip([2 + a for a in m]) if m else probe).flatten().numpy().tobytes() for m in mirrors)
