"""scikit-image's 3D Lee skeleton of a whole kidney, computed in z-slabs with a halo, and the clDice counts.

Lee thinning (``skimage.morphology.skeletonize(volume, method="lee")``) peels border voxels layer by layer until
only a curve skeleton is left; a voxel's fate depends on voxels as far away as the structure is thick (one layer per
iteration) plus short raster-order chains within an iteration. A slab cut at plane ``c`` sees false background
beyond ``c``, and the thinning that starts there reaches into the slab about as far as the cut structures are
thick. So each core slab is skeletonised together with ``halo`` planes on either side (cropped in-plane to the
foreground) and only the core is kept. With a halo larger than the thickest structure the result equals the
whole-volume skeleton on every volume we tested (tests/test_kidney_metrics.py); the halo is a parameter, and
``skeleton_difference`` measures the difference from the whole-volume skeleton on a volume that fits in memory.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from skimage.morphology import skeletonize

from nnunet_vasculature.postprocess.packed_volume import PackedVolume

DEFAULT_CORE = 96
DEFAULT_HALO = 48


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


def skeleton_slabs(mask: PackedVolume, core: int = DEFAULT_CORE,
                   halo: int = DEFAULT_HALO) -> Iterator[tuple[int, np.ndarray]]:
    """The Lee skeleton of a packed volume, slab by slab.

    Args:
        mask: packed binary volume (z, y, x).
        core: planes of skeleton produced per slab.
        halo: extra planes skeletonised on each side of the core and discarded.
    Yields:
        ``(z0, skeleton)`` with ``skeleton`` the bool ``(B, H, W)`` skeleton of planes ``z0 .. z0 + B``.
    """
    depth = mask.shape[0]
    for z0 in range(0, depth, core):
        z1 = min(z0 + core, depth)
        lo, hi = max(z0 - halo, 0), min(z1 + halo, depth)
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


def packed_skeleton(mask: PackedVolume, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO) -> PackedVolume:
    """The slab-wise Lee skeleton of ``mask`` as a packed volume (kept when several predictions are compared
    with one label volume).

    Args:
        mask: packed binary volume.
        core, halo: slab geometry.
    Returns:
        packed skeleton.
    """
    out = PackedVolume(mask.shape)
    for z0, sk in skeleton_slabs(mask, core, halo):
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


def skeleton_difference(volume: np.ndarray, core: int = DEFAULT_CORE, halo: int = DEFAULT_HALO) -> int:
    """Number of voxels where the slab-wise skeleton differs from the whole-volume Lee skeleton.

    Args:
        volume: a 3D mask small enough to skeletonise whole.
        core, halo: slab geometry.
    Returns:
        count of differing voxels (0: identical).
    """
    volume = np.asarray(volume) != 0
    packed = PackedVolume(volume.shape)
    packed.write(0, volume)
    return int((packed_skeleton(packed, core, halo)[0:volume.shape[0]] != lee_skeleton(volume)).sum())
