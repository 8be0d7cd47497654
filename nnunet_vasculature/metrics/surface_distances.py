"""Streamed surface metrics beyond tolerance 0: surface Dice at tolerance 1 voxel, and MONAI's symmetric average
surface distance (ASSD), both exact and in bounded memory.

Surface Dice at tolerance 1 (DeepMind ``surface-distance``, spacing 1): a surface cube (2x2x2 neighbour code not 0
or 255) of one mask is matched when the other mask has a surface cube within Euclidean distance 1 of it, i.e. in the
same cube or one of its 6 face neighbours. So a cube layer needs only the layers before and after it.

ASSD (``monai.metrics.compute_average_surface_distance(symmetric=True)``): edges are the mask minus its 6-connected
erosion (outside the volume is background); every edge voxel of each mask gets the exact Euclidean distance to the
nearest edge voxel of the other mask; the mean of both directions pooled. Distances are unbounded, so the search is
exact by construction: a k-d tree of the other mask's edges in a window of slabs around the target slab answers every
target whose distance is within its distance to the window's border; the few that are not (far false positives) are
searched slab by slab over the whole volume, skipping slabs that cannot hold a closer voxel.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from nnunet_vasculature.metrics.area_table import AREA
from nnunet_vasculature.metrics.packed_volume import PackedVolume
from nnunet_vasculature.metrics.skeleton import foreground_box
from nnunet_vasculature.metrics.surface_dice import (
    DEFAULT_BLOCK,
    SurfaceDiceAccumulator,
    _cube_codes,
    _plane_codes,
)


def _is_border(codes: np.ndarray) -> np.ndarray:
    return (codes != 0) & (codes != 255)


def _dilate_6(border: np.ndarray) -> np.ndarray:
    """6-neighbour dilation of the middle layers of ``border`` (n, H, W) -> (n - 2, H, W)."""
    mid = border[1:-1]
    out = mid | border[:-2] | border[2:]
    out[:, 1:] |= mid[:, :-1]
    out[:, :-1] |= mid[:, 1:]
    out[:, :, 1:] |= mid[:, :, :-1]
    out[:, :, :-1] |= mid[:, :, 1:]
    return out


def _code_counts(codes: np.ndarray) -> np.ndarray:
    """Cubes per code (256 bins); code 0 (no surface, no area) is left out, which is most cubes."""
    return np.bincount(codes[codes != 0], minlength=256)


def areas(code_counts: np.ndarray) -> tuple[float, ...]:
    """Surface areas of rows of cube counts per code (the marching-cubes area of each code, summed).

    Args:
        code_counts: ``(..., 256)`` integer counts.
    Returns:
        one area per row.
    """
    return tuple(float(a) for a in np.atleast_2d(code_counts) @ AREA)


class ToleranceOneAccumulator:
    """Streaming surface Dice at tolerance 1 voxel: feed consecutive z-blocks, then ``score()``.

    The sums are counts of surface cubes per code (integers), so the counts of z-ranges computed apart add up to
    exactly those of the whole volume: start at plane ``z0`` with ``before`` (planes ``z0 - 2, z0 - 1``), add planes
    ``z0 .. z1``, then plane ``z1`` (its cube layer is a neighbour only) and read :attr:`code_counts` unclosed.
    """

    def __init__(self, plane_shape: tuple[int, int], before: tuple[np.ndarray, np.ndarray] | None = None):
        """
        Args:
            plane_shape: ``(H, W)``.
            before: ``(pred planes, gt planes)``, each ``(2, H, W)``: the two planes before the first one added
                (background outside the volume); None: the volume starts here.
        """
        h, w = plane_shape
        self.prev_g = np.zeros((h + 1, w + 1), dtype=np.uint8)    # in-plane codes of the last plane
        self.prev_p = self.prev_g.copy()
        zero = np.zeros((1, h + 1, w + 1), dtype=np.uint8)
        self.tail_g, self.tail_p = zero, zero.copy()              # cube layers kept as neighbours
        if before is not None:
            cp, cg = _plane_codes(np.asarray(before[0]) != 0), _plane_codes(np.asarray(before[1]) != 0)
            self.prev_p, self.prev_g = cp[-1], cg[-1]
            self.tail_p, self.tail_g = _cube_codes(cp[1:], cp[0]), _cube_codes(cg[1:], cg[0])
        # surface cubes per code: matched gt, matched pred, all gt, all pred
        self.code_counts = np.zeros((4, 256), dtype=np.int64)
        self.closed = False

    def add(self, pred_block: np.ndarray, gt_block: np.ndarray) -> None:
        """Add the next planes of prediction and labels (``(B, H, W)``, non-zero = foreground)."""
        cg, cp = _plane_codes(np.asarray(gt_block) != 0), _plane_codes(np.asarray(pred_block) != 0)
        self._feed(_cube_codes(cg, self.prev_g), _cube_codes(cp, self.prev_p))
        self.prev_g, self.prev_p = cg[-1], cp[-1]

    def _feed(self, layers_g: np.ndarray, layers_p: np.ndarray) -> None:
        stack_g = np.concatenate([self.tail_g, layers_g])
        stack_p = np.concatenate([self.tail_p, layers_p])
        if len(stack_g) >= 3:
            bg, bp = _is_border(stack_g), _is_border(stack_p)
            mid_g, mid_p = stack_g[1:-1], stack_p[1:-1]
            self.code_counts += np.stack([_code_counts(mid_g[bg[1:-1] & _dilate_6(bp)]),
                                          _code_counts(mid_p[bp[1:-1] & _dilate_6(bg)]),
                                          _code_counts(mid_g), _code_counts(mid_p)])
        self.tail_g, self.tail_p = stack_g[-2:], stack_p[-2:]

    def close(self) -> None:
        """Count the closing cube layer (last plane against the zero padding); the volume ends here."""
        if not self.closed:     # closing cube layer against the zero padding, then an empty neighbour layer
            zero = np.zeros_like(self.prev_g)
            self._feed(np.stack([self.prev_g << 4, zero]), np.stack([self.prev_p << 4, zero]))
            self.closed = True

    def counts(self) -> tuple[float, float, float, float]:
        """(matched gt area, matched pred area, gt area, pred area)."""
        self.close()
        return areas(self.code_counts)

    def score(self, empty_score: float = float("nan")) -> float:
        """(matched gt area + matched pred area) / (gt area + pred area); ``empty_score`` when both are empty."""
        return tolerance_one_score(self.counts(), empty_score)


def tolerance_one_score(counts: tuple[float, float, float, float], empty_score: float = float("nan")) -> float:
    """Surface Dice from ``(matched gt area, matched pred area, gt area, pred area)``.

    Args:
        counts: the four areas.
        empty_score: the value when both surfaces are empty.
    Returns:
        the score.
    """
    mg, mp, ag, ap = counts
    return empty_score if ag + ap == 0 else (mg + mp) / (ag + ap)


def surface_counts(pred: PackedVolume, gt: PackedVolume, z0: int, z1: int,
                   which: tuple[str, ...] = ("nsd0", "nsd1")) -> dict[str, np.ndarray]:
    """Both surface Dice counts of the cube layers of planes ``z0 .. z1`` (with the closing layer when ``z1`` is
    the last plane): summed over consecutive ranges they equal the counts of the whole volume. Computed on the
    in-plane box of the foreground of planes ``z0 - 2 .. z1 + 1`` (cubes outside it have no surface).

    Args:
        pred, gt: packed masks (or windows holding planes ``z0 - 2 .. z1 + 1``).
        z0, z1: the planes.
        which: ``"nsd0"`` (``SurfaceDiceAccumulator.hist``, 65536 pair counts) and/or ``"nsd1"``
            (``ToleranceOneAccumulator.code_counts``, (4, 256)).
    Returns:
        ``{name: integer counts}``.
    """
    boxes = [b for b in (pred.box(z0 - 2, z1 + 1), gt.box(z0 - 2, z1 + 1)) if b is not None]
    if not boxes:
        return {k: v for k, v in (("nsd0", np.zeros(65536, np.int64)), ("nsd1", np.zeros((4, 256), np.int64)))
                if k in which}
    box = tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in (0, 1))
    plane = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    nsd0 = SurfaceDiceAccumulator(plane)
    nsd0.prev_p, nsd0.prev_g = (_plane_codes(m.read(z0 - 1, z0, *box))[-1] for m in (pred, gt))
    nsd1 = ToleranceOneAccumulator(plane, before=(pred.read(z0 - 2, z0, *box), gt.read(z0 - 2, z0, *box)))
    for a in range(z0, z1, DEFAULT_BLOCK):
        b = min(a + DEFAULT_BLOCK, z1)
        p, g = pred.read(a, b, *box), gt.read(a, b, *box)
        if "nsd0" in which:
            nsd0.add(p, g)
        if "nsd1" in which:
            nsd1.add(p, g)
    if z1 == pred.shape[0]:
        nsd0.counts()           # the closing layers against the zero padding
        nsd1.close()
    elif "nsd1" in which:       # the next plane's cube layer: the last layer's neighbour
        nsd1.add(pred.read(z1, z1 + 1, *box), gt.read(z1, z1 + 1, *box))
    return {k: v for k, v in (("nsd0", nsd0.hist), ("nsd1", nsd1.code_counts)) if k in which}


def _edges(block: np.ndarray) -> np.ndarray:
    """Edges of the middle planes of ``block`` (n + 2, H, W) -> (n, H, W): foreground voxels with a background
    6-neighbour, outside the array being background (``binary_erosion`` with the 6-cross, ``border_value=0``)."""
    mid = block[1:-1]
    inner = mid & block[:-2] & block[2:]
    inner[:, 1:] &= mid[:, :-1]
    inner[:, :-1] &= mid[:, 1:]
    inner[:, :, 1:] &= mid[:, :, :-1]
    inner[:, :, :-1] &= mid[:, :, 1:]
    inner[:, [0, -1]] = False
    inner[:, :, [0, -1]] = False
    return mid & ~inner


def edges(mask: PackedVolume, z0: int, z1: int) -> np.ndarray:
    """MONAI's edges of planes ``z0 .. z1``: the mask minus its 6-connected erosion, outside = background.

    Args:
        mask: packed binary volume.
        z0, z1: plane range inside the volume.
    Returns:
        ``(z1 - z0, H, W)`` bool array.
    """
    return _edges(mask.padded(z0 - 1, z1 + 1))


def edge_points(mask: PackedVolume, z0: int, z1: int) -> np.ndarray:
    """Coordinates of the edge voxels of planes ``z0 .. z1`` in raster order, as ``np.nonzero(edges(...))``
    gives them; computed on the planes' in-plane foreground box (outside it there is no edge and no foreground
    neighbour).

    Args:
        mask: packed binary volume (or a window holding planes ``z0 - 1 .. z1 + 1``).
        z0, z1: plane range inside the volume.
    Returns:
        float64 ``(N, 3)`` (z, y, x).
    """
    block = mask.padded(z0 - 1, z1 + 1)
    box = foreground_box(block[1:-1])
    if box is None:
        return np.zeros((0, 3))
    zz, yy, xx = np.nonzero(_edges(block[:, box[1], box[2]]))
    return np.stack([zz + z0, yy + box[1].start, xx + box[2].start], axis=1).astype(np.float64)


class _EdgePoints:
    """Edge voxel coordinates of one mask, per slab of ``slab`` planes, computed on demand (a small cache)."""

    def __init__(self, mask: PackedVolume, slab: int):
        self.mask, self.slab = mask, slab
        self.n_slabs = -(-mask.shape[0] // slab)
        self.cache: dict[int, np.ndarray] = {}

    def points(self, s: int) -> np.ndarray:
        if s not in self.cache:
            z0 = s * self.slab
            self.cache[s] = edge_points(self.mask, z0, min(z0 + self.slab, self.mask.shape[0]))
        return self.cache[s]

    def window(self, s0: int, s1: int) -> np.ndarray:
        s0, s1 = max(s0, 0), min(s1, self.n_slabs)
        return np.concatenate([self.points(s) for s in range(s0, s1)]) if s1 > s0 else np.zeros((0, 3))

    def forget_before(self, s: int) -> None:
        for key in [k for k in self.cache if k < s]:
            del self.cache[key]


class SlabDistances(NamedTuple):
    """One target slab's share of a one-way surface distance: the sum and count of the distances settled in its
    window, and the voxels left for the search over the whole volume with their best distance so far."""
    total: float
    count: int
    far_points: np.ndarray
    far_best: np.ndarray


def _slab_distances(targets: _EdgePoints, sources: _EdgePoints, s: int) -> SlabDistances | None:
    """Distances from target slab ``s``'s edge voxels to the source edges in slabs ``s - 1 .. s + 1``; None when
    the slab has no target voxel."""
    depth, slab = targets.mask.shape[0], targets.slab
    pts = targets.points(s)
    if not len(pts):
        return None
    window = sources.window(s - 1, s + 2)
    lo, hi = (s - 1) * slab, (s + 2) * slab            # window planes lo .. hi (clipped below)
    best = cKDTree(window).query(pts, k=1)[0] if len(window) else np.full(len(pts), np.inf)
    z = pts[:, 0]
    # any source voxel outside the window is at least this far away (in z alone)
    bound = np.minimum(np.where(lo > 0, z - lo + 1, np.inf), np.where(hi < depth, hi - z, np.inf))
    done = best <= bound
    return SlabDistances(float(best[done].sum()), int(done.sum()), pts[~done], best[~done])


def slab_distances(pred: PackedVolume, gt: PackedVolume, slabs: range, slab: int = 32,
                   progress: Callable[[int], None] | None = None
                   ) -> list[tuple[SlabDistances | None, SlabDistances | None]]:
    """Both directions' shares (pred -> gt, gt -> pred) of target slabs ``slabs``: what one task computes.

    Args:
        pred, gt: packed masks, or windows of them holding planes ``(slabs.start - 1) * slab - 1`` to
            ``(slabs.stop + 1) * slab + 1`` (clipped to the volume).
        slabs: target slab numbers (slab ``s`` is planes ``s * slab .. (s + 1) * slab``).
        slab: planes per slab.
        progress: optional callback, called with 1 per target slab done.
    Returns:
        per target slab, ``(pred -> gt, gt -> pred)``.
    """
    pts_p, pts_g = _EdgePoints(pred, slab), _EdgePoints(gt, slab)
    out = []
    for s in slabs:
        out.append((_slab_distances(pts_p, pts_g, s), _slab_distances(pts_g, pts_p, s)))
        for points in (pts_p, pts_g):
            points.forget_before(s - 1)
        if progress is not None:
            progress(1)
    return out


def _one_way_total(shares: list[SlabDistances | None], sources: _EdgePoints) -> tuple[float, int]:
    """Sum and count of the distances of one direction from its slab shares (in slab order), the far voxels
    searched over the whole source volume."""
    total, count = 0.0, 0
    far_points, far_best = [], []
    for share in shares:
        if share is None:
            continue
        total += share.total
        count += share.count
        if len(share.far_points):
            far_points.append(share.far_points)
            far_best.append(share.far_best)
    if far_points:
        best = _search_all_slabs(np.concatenate(far_points), np.concatenate(far_best), sources)
        total += float(best.sum())
        count += len(best)
    return total, count


def _search_all_slabs(pts: np.ndarray, best: np.ndarray, sources: _EdgePoints) -> np.ndarray:
    """Exact nearest distances for ``pts`` given upper bounds ``best``: every slab that could hold a closer source
    voxel (its z-gap below the bound) is searched."""
    z = pts[:, 0]
    for s in range(sources.n_slabs):
        z0, z1 = s * sources.slab, min((s + 1) * sources.slab, sources.mask.shape[0]) - 1
        gap = np.maximum(np.maximum(z0 - z, z - z1), 0)
        need = gap < best
        if not need.any():
            continue
        src = sources.points(s)
        sources.cache.clear()
        if not len(src):
            continue
        found = cKDTree(src).query(pts[need], k=1, distance_upper_bound=float(best[need].max()))[0]
        best[need] = np.minimum(best[need], found)
    return best


def assd_from_slabs(pred: PackedVolume, gt: PackedVolume,
                    shares: list[tuple[SlabDistances | None, SlabDistances | None]], slab: int = 32) -> float:
    """MONAI's symmetric ASSD from every target slab's shares (:func:`slab_distances`, in slab order).

    Args:
        pred, gt: the whole packed masks (the far voxels are searched over them).
        shares: per slab of the volume, ``(pred -> gt, gt -> pred)``.
        slab: planes per slab.
    Returns:
        the mean of all edge-to-nearest-edge distances of both directions pooled; ``inf`` when exactly one mask
        is empty, NaN when both are.
    """
    has_p, has_g = pred.any(), gt.any()
    if not has_p and not has_g:
        return float("nan")
    if not has_p or not has_g:
        return float("inf")
    sum_pg, n_pg = _one_way_total([pg for pg, _ in shares], _EdgePoints(gt, slab))
    sum_gp, n_gp = _one_way_total([gp for _, gp in shares], _EdgePoints(pred, slab))
    return (sum_pg + sum_gp) / (n_pg + n_gp)


def average_symmetric_surface_distance(pred: PackedVolume, gt: PackedVolume, slab: int = 32,
                                       progress: Callable[[int], None] | None = None) -> float:
    """MONAI's ``compute_average_surface_distance(pred, gt, symmetric=True)`` (spacing 1) of two packed masks.

    Args:
        pred, gt: packed binary volumes of equal shape.
        slab: planes per slab (memory: the k-d tree of 3 slabs of edge voxels).
        progress: optional callback, called with 1 per target slab processed.
    Returns:
        mean of all edge-to-nearest-edge distances of both directions pooled; ``inf`` when exactly one mask is
        empty, NaN when both are.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from labels shape {gt.shape}")
    if not (pred.any() and gt.any()):
        return assd_from_slabs(pred, gt, [], slab)
    shares = slab_distances(pred, gt, range(-(-gt.shape[0] // slab)), slab, progress)
    return assd_from_slabs(pred, gt, shares, slab)
