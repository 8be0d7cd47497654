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

from nnunet_vasculature.metrics.packed_volume import PackedVolume

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
    volume = np.asarray(volume)
    volume = volume if volume.dtype == bool else volume != 0
    out = np.zeros(volume.shape, dtype=bool)
    box = foreground_box(volume)
    if box is not None:
        out[box] = skeletonize(volume[box], method="lee") != 0
    return out


def foreground_box(volume: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a boolean array's True voxels (None when there are none), from its projections.

    Args:
        volume: bool array.
    Returns:
        one slice per axis, or None.
    """
    hit = np.flatnonzero(volume.reshape(len(volume), -1).any(axis=1))
    if not len(hit):
        return None
    first = slice(int(hit[0]), int(hit[-1]) + 1)
    return (first,) if volume.ndim == 1 else (first, *foreground_box(volume[first].any(axis=0)))


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
    planes = np.asarray(planes, dtype=bool)
    depth, height, width = planes.shape
    h = -(-height // pool) * pool
    if pool == 4:       # on the packed planes: a byte's two nibbles are two blocks' columns
        bits = np.zeros((depth, h, (width + 7) // 8), dtype=np.uint8)
        bits[:, :height] = np.packbits(planes, axis=-1)
        rows = bits.reshape(depth, h // 4, 4, -1)
        rows = rows[:, :, 0] & rows[:, :, 1] & rows[:, :, 2] & rows[:, :, 3]
        full = np.stack([(rows & 0xF0) == 0xF0, (rows & 0x0F) == 0x0F], axis=-1).reshape(depth, h // 4, -1)
    else:
        w = -(-width // pool) * pool
        padded = np.zeros((depth, h, w), dtype=bool)
        padded[:, :height, :width] = planes
        full = padded.reshape(depth, h // pool, pool, w // pool, pool).all(axis=(2, 4))
    out = np.full(depth, (pool - 1) * math.sqrt(2))
    for i in np.flatnonzero(full.any(axis=(1, 2))):
        # the transform on the full blocks' bounding box padded with background equals it on the whole plane:
        # the nearest background pixel of any pixel in the box is in the box or on the ring around it
        box = foreground_box(full[i])
        out[i] += pool * float(distance_transform_edt(np.pad(full[i][box], 1)).max())
    return out


class PlaneRadii:
    """:func:`disk_radius_bounds` of a packed volume's planes, computed when first asked for and kept."""

    def __init__(self, mask: PackedVolume, block: int = 32):
        self.mask, self.block = mask, block
        self.radius = np.full(mask.shape[0], np.nan)

    def record(self, z0: int, planes: np.ndarray) -> None:
        """Compute the bounds of planes ``z0 .. z0 + len(planes)`` from those planes (read anyway elsewhere).

        Args:
            z0: first plane.
            planes: bool ``(B, H, W)``, the mask's planes.
        """
        self.radius[z0:z0 + len(planes)] = disk_radius_bounds(planes)

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


def core_ranges(depth: int, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO,
                radii: PlaneRadii | None = None) -> list[tuple[int, int, int, int]]:
    """The slabs of a volume: ``(z0, z1, lo, hi)``, core planes ``z0 .. z1`` skeletonised on planes ``lo .. hi``.

    Args:
        depth: planes in the volume.
        core, halo: slab geometry (see :func:`skeleton_slabs`).
        radii: per-plane disk radius bounds (the halo follows the thickness), or None for a fixed halo.
    Returns:
        one tuple per core, in z order.
    """
    return [(z0, min(z0 + core, depth), *slab_range(z0, min(z0 + core, depth), depth, halo, radii))
            for z0 in range(0, depth, core)]


def core_skeleton(mask: PackedVolume, z0: int, z1: int, lo: int, hi: int) -> np.ndarray:
    """The Lee skeleton of planes ``lo .. hi`` of ``mask``, kept on the core planes ``z0 .. z1``.

    Args:
        mask: packed binary volume (or a window of it holding planes ``lo .. hi``).
        z0, z1, lo, hi: as :func:`core_ranges` gives them.
    Returns:
        bool ``(z1 - z0, H, W)``.
    """
    return lee_skeleton(mask[lo:hi])[z0 - lo:z1 - lo]


def skeleton_hits(mask: PackedVolume, other: PackedVolume, z0: int, z1: int, lo: int, hi: int) -> tuple[int, int]:
    """``(|S & other|, |S|)`` on the core planes ``z0 .. z1``, S the Lee skeleton of ``mask``'s planes ``lo .. hi``
    (:func:`core_skeleton`); both masks are unpacked only inside the in-plane box of ``mask``'s foreground.

    Args:
        mask: the skeletonised mask (or a window holding planes ``lo .. hi``).
        other: the other mask (or a window holding planes ``z0 .. z1``).
        z0, z1, lo, hi: as :func:`core_ranges` gives them.
    Returns:
        the two counts.
    """
    box = mask.box(lo, hi)
    if box is None:
        return 0, 0
    skeleton = lee_skeleton(mask.read(lo, hi, *box))[z0 - lo:z1 - lo]
    return int((skeleton & other.read(z0, z1, *box)).sum()), int(skeleton.sum())


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
    radii = PlaneRadii(mask) if follow_thickness else None
    for z0, z1, lo, hi in core_ranges(mask.shape[0], core, halo, radii):
        yield z0, core_skeleton(mask, z0, z1, lo, hi)


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
