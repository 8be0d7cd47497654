"""scikit-image's 3D Lee skeleton of a whole kidney, computed in z-slabs with a halo, and the clDice counts.

Lee thinning (``skimage.morphology.skeletonize(volume, method="lee")``) peels border voxels layer by layer until
only a curve skeleton is left; a voxel's fate depends on voxels as far away as the structure is thick (one layer per
iteration) plus short raster-order chains within an iteration. A slab cut at plane ``c`` sees false background
beyond ``c``, and the thinning that starts there reaches into the slab about as far as the cut structures are
thick. So each core slab is skeletonised together with a halo of planes on either side (cropped in-plane to the
foreground) and only the core is kept.

The halo follows the thickness: at least ``halo`` planes, and at least ``2 R + 8`` where ``R`` bounds from above the
radius of the largest disk inside any plane of the slab and its halo (read from 4 x 4-pooled planes, so thin
vessels cost nothing; a renal artery of radius 50 gets a halo of ~120 planes in the slabs it crosses). Measured
(benchmarks/skeleton_halo.py): cylinders along z, oblique and in-plane, balls and Y junctions of radius 10–32 need a
halo of at most 1.5 R for the slab skeleton to equal the whole-volume one (radius 6: 3 R = 18 planes); the grown
halo equals it on all of them. That is a measured rule, not a proof: Lee's sequential
re-checking can in principle carry a change further, so ``skeleton_difference`` measures the difference from the
whole-volume skeleton on any volume that fits in memory.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

from nnunet_vasculature.postprocess.packed_volume import PackedVolume

DEFAULT_CORE = 96
DEFAULT_HALO = 48
HALO_MARGIN = 8
POOL = 4


def lee_skeleton(volume: np.ndarray) -> np.ndarray:
    """scikit-image's 3D Lee skeleton of a (slice, H, W) volume, computed on the foreground's bounding box.

    Args:
        volume: boolean (or 0/non-zero) 3D array.
    Returns:
        bool array of the same shape.
    """
    volume = np.asarray(volume) != 0
    out = np.zeros(volume.shape, dtype=bool)
    if not volume.any():
        return out
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(volume))
    out[box] = skeletonize(volume[box], method="lee") != 0
    return out


def disk_radius_bounds(planes: np.ndarray, pool: int = POOL) -> np.ndarray:
    """Per plane, an upper bound of the radius (voxels) of the largest disk inside the plane's foreground.

    A disk of radius R contains every ``pool`` x ``pool`` block whose voxels all lie in it, so the Euclidean
    distance transform of the "block is all foreground" image, times ``pool``, plus the largest offset of a voxel
    from its block's centre, ``(pool - 1) sqrt 2``, is at least R.

    Args:
        planes: bool ``(B, H, W)``.
        pool: block size.
    Returns:
        float ``(B,)``.
    """
    depth, height, width = planes.shape
    h, w = -(-height // pool) * pool, -(-width // pool) * pool
    padded = np.zeros((depth, h, w), dtype=bool)
    padded[:, :height, :width] = planes
    full = padded.reshape(depth, h // pool, pool, w // pool, pool).all(axis=(2, 4))
    out = np.full(depth, (pool - 1) * math.sqrt(2))
    for i in np.flatnonzero(full.any(axis=(1, 2))):
        out[i] += pool * float(distance_transform_edt(np.pad(full[i], 1)).max())
    return out


class PlaneRadii:
    """:func:`disk_radius_bounds` of a packed volume's planes, computed when first asked for and kept."""

    def __init__(self, mask: PackedVolume, block: int = 32):
        self.mask, self.block = mask, block
        self.radius = np.full(mask.shape[0], np.nan)

    def max(self, z0: int, z1: int) -> float:
        """Largest bound over planes ``z0 .. z1``."""
        for a in range(z0 // self.block * self.block, z1, self.block):      # aligned: a block is computed once
            b = min(a + self.block, self.mask.shape[0])
            if np.isnan(self.radius[a:b]).any():
                self.radius[a:b] = disk_radius_bounds(self.mask[a:b])
        return float(self.radius[z0:z1].max())


def slab_range(z0: int, z1: int, depth: int, halo: int, radii: PlaneRadii | None) -> tuple[int, int]:
    """Planes ``lo .. hi`` skeletonised for the core ``z0 .. z1``: ``halo`` on each side, grown to ``2 R + 8`` while
    the thickest plane in range (``radii``; None: fixed halo) asks for more.

    Args:
        z0, z1: core planes.
        depth: planes in the volume.
        halo: the smallest halo.
        radii: per-plane disk radius bounds, or None for a fixed halo.
    Returns:
        ``(lo, hi)``.
    """
    h = halo
    while True:
        lo, hi = max(z0 - h, 0), min(z1 + h, depth)
        if radii is None or (lo == 0 and hi == depth):
            return lo, hi
        need = max(halo, math.ceil(2 * radii.max(lo, hi)) + HALO_MARGIN)
        if need <= h:
            return lo, hi
        h = need


def skeleton_slabs(mask: PackedVolume, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO,
                   follow_thickness: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """The Lee skeleton of a packed volume, slab by slab.

    Args:
        mask: packed binary volume (z, y, x).
        core: planes of skeleton produced per slab.
        halo: extra planes skeletonised on each side of the core and discarded (the smallest halo).
        follow_thickness: grow the halo to ``2 R + 8`` where the slab holds a disk of radius R (see the module
            docstring); False: exactly ``halo``.
    Yields:
        ``(z0, skeleton)`` with ``skeleton`` the bool ``(B, H, W)`` skeleton of planes ``z0 .. z0 + B``.
    """
    depth = mask.shape[0]
    radii = PlaneRadii(mask) if follow_thickness else None
    for z0 in range(0, depth, core):
        z1 = min(z0 + core, depth)
        lo, hi = slab_range(z0, z1, depth, halo, radii)
        yield z0, lee_skeleton(mask[lo:hi])[z0 - lo:z1 - lo]


def cldice_counts(pred: PackedVolume, gt: PackedVolume, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO,
                  gt_skeleton: PackedVolume | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[int, int, int, int]:
    """Counts for clDice from slab-wise Lee skeletons.

    Args:
        pred, gt: packed binary volumes of equal shape.
        core, halo: slab geometry (see :func:`skeleton_slabs`).
        gt_skeleton: the labels' skeleton if already computed (tuning reuses it), else it is computed here.
        progress: optional callback, called with the number of planes done.
    Returns:
        ``(|S(pred) & gt|, |S(pred)|, |S(gt) & pred|, |S(gt)|)``.
    """
    counts = np.zeros(4, dtype=np.int64)
    for z0, sk in skeleton_slabs(pred, core, halo):
        counts[0] += int((sk & gt[z0:z0 + len(sk)]).sum())
        counts[1] += int(sk.sum())
        if progress is not None:
            progress(len(sk))
    slabs = ((z0, gt_skeleton[z0:z0 + core]) for z0 in range(0, gt.shape[0], core)) if gt_skeleton is not None \
        else skeleton_slabs(gt, core, halo)
    for z0, sk in slabs:
        counts[2] += int((sk & pred[z0:z0 + len(sk)]).sum())
        counts[3] += int(sk.sum())
        if progress is not None:
            progress(len(sk))
    return tuple(int(c) for c in counts)


def packed_skeleton(mask: PackedVolume, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO,
                    follow_thickness: bool = True) -> PackedVolume:
    """The slab-wise Lee skeleton of ``mask`` as a packed volume (kept when several predictions are compared
    with one label volume).

    Args:
        mask: packed binary volume.
        core, halo, follow_thickness: slab geometry (see :func:`skeleton_slabs`).
    Returns:
        packed skeleton.
    """
    out = PackedVolume(mask.shape)
    for z0, sk in skeleton_slabs(mask, core, halo, follow_thickness):
        out.write(z0, sk)
    return out


def cldice_from_counts(counts: tuple[int, int, int, int]) -> float:
    """clDice = 2 Tprec Tsens / (Tprec + Tsens), Tprec = |S(pred) & gt| / |S(pred)|, Tsens = |S(gt) & pred| /
    |S(gt)|; NaN wherever a 0/0 occurs (an empty mask, or Tprec = Tsens = 0).

    Args:
        counts: from :func:`cldice_counts`.
    Returns:
        clDice.
    """
    hit_p, n_p, hit_g, n_g = counts
    if n_p == 0 or n_g == 0:
        return float("nan")
    tprec, tsens = hit_p / n_p, hit_g / n_g
    return float("nan") if tprec + tsens == 0 else 2 * tprec * tsens / (tprec + tsens)


def skeleton_difference(volume: np.ndarray, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO,
                        follow_thickness: bool = True) -> int:
    """Number of voxels where the slab-wise skeleton differs from the whole-volume Lee skeleton.

    Args:
        volume: a 3D mask small enough to skeletonise whole.
        core, halo, follow_thickness: slab geometry (see :func:`skeleton_slabs`).
    Returns:
        count of differing voxels (0: identical).
    """
    volume = np.asarray(volume) != 0
    packed = PackedVolume(volume.shape)
    packed.write(0, volume)
    slabs = packed_skeleton(packed, core, halo, follow_thickness)
    return int((slabs[0:volume.shape[0]] != lee_skeleton(volume)).sum())
