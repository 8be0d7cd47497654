"""Surface Dice at tolerance 0, exactly as the Kaggle metric (DeepMind ``surface-distance``).

Every 2x2x2 cube of the zero-padded volume gets an 8-bit neighbour code from its corners and, from
a marching-cubes table, a surface area. At tolerance 0 a cube's area is "matched" when the other
mask has surface in the very same cube, so the score is a sum over cubes and the volume can be
streamed a few slices at a time: memory is O(slice), not O(volume).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunet_vasculature.postprocess._area_table import AREA

if TYPE_CHECKING:
    from nnunet_vasculature.io.volumes import ZSliceable

# every code but "all out" (0) and "all in" (255) is surface, and has a positive area
assert AREA[0] == 0 and AREA[255] == 0 and (AREA[1:255] > 0).all()

_PAIR_AREA_G = np.repeat(AREA, 256)          # area of gt code g for combined index g*256+p
_PAIR_AREA_P = np.tile(AREA, 256)            # area of pred code p
_PAIR_MATCH = (_PAIR_AREA_G > 0) & (_PAIR_AREA_P > 0)
DEFAULT_BLOCK = 16


def _plane_codes(block: np.ndarray) -> np.ndarray:
    """4-bit in-plane codes (B, H+1, W+1) of a boolean block (B, H, W), zero-padded around."""
    b, h, w = block.shape
    p = np.zeros((b, h + 2, w + 2), dtype=np.uint8)
    p[:, 1:-1, 1:-1] = block
    return (p[:, :-1, :-1] << 3) | (p[:, :-1, 1:] << 2) | (p[:, 1:, :-1] << 1) | p[:, 1:, 1:]


def _cube_codes(planes: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """8-bit cube codes between consecutive planes: 16 * code(z-1) + code(z)."""
    full = np.concatenate([prev[None], planes])
    return (full[:-1] << 4) | full[1:]


class SurfaceDiceAccumulator:
    """Streaming surface Dice: feed consecutive z-blocks of prediction and labels, then ``score()``."""

    def __init__(self, plane_shape: tuple[int, int]):
        h, w = plane_shape
        self.hist = np.zeros(65536, dtype=np.int64)   # counts of (gt code, pred code) pairs
        self.prev_g = np.zeros((h + 1, w + 1), dtype=np.uint8)
        self.prev_p = self.prev_g.copy()
        self.closed = False

    def add(self, pred_block: np.ndarray, gt_block: np.ndarray) -> None:
        cg, cp = _plane_codes(np.asarray(gt_block) > 0), _plane_codes(np.asarray(pred_block) > 0)
        _accumulate(self.hist, _cube_codes(cg, self.prev_g), _cube_codes(cp, self.prev_p))
        self.prev_g, self.prev_p = cg[-1], cp[-1]

    def counts(self) -> tuple[float, float, float, float]:
        """(matched gt area, matched pred area, gt area, pred area)."""
        if not self.closed:   # the closing layer: last plane against the zero padding
            _accumulate(self.hist, (self.prev_g << 4)[None], (self.prev_p << 4)[None])
            self.closed = True
        matched = self.hist * _PAIR_MATCH
        return (float(matched @ _PAIR_AREA_G), float(matched @ _PAIR_AREA_P),
                float(self.hist @ _PAIR_AREA_G), float(self.hist @ _PAIR_AREA_P))

    def score(self, empty_score: float = float("nan")) -> float:
        mg, mp, ag, ap = self.counts()
        return empty_score if ag + ap == 0 else (mg + mp) / (ag + ap)


def _as_array(x: object, what: str) -> ZSliceable:
    """The metric takes arrays (or anything with ``.shape`` and z-slicing); files are the caller's job."""
    if isinstance(x, (str, Path, list, tuple)) or not hasattr(x, "shape"):
        raise TypeError(f"{what}: expected an array or a z-sliceable volume, got {type(x).__name__} "
                        f"(open files with nnunet_vasculature.io.volumes first)")
    return x


def _check_pair(a: ZSliceable, b: ZSliceable, what_a: str, what_b: str) -> tuple[ZSliceable, ZSliceable]:
    a, b = _as_array(a, what_a), _as_array(b, what_b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what_a} shape {tuple(a.shape)} differs from {what_b} shape {tuple(b.shape)}")
    if len(b.shape) != 3:
        raise ValueError(f"expected 3D volumes (z, y, x), got shape {tuple(b.shape)}")
    return a, b


def _accumulate(hist: np.ndarray, codes_g: np.ndarray, codes_p: np.ndarray) -> None:
    combined = (codes_g.astype(np.uint16) << 8) | codes_p
    combined = combined.ravel()
    # empty cubes (code 0 in both) have no area: counting only the others is much cheaper for
    # sparse structures such as vessels
    hist += np.bincount(combined[combined != 0], minlength=65536)


def surface_dice(pred: ZSliceable, gt: ZSliceable, empty_score: float = float("nan"),
                 block: int = DEFAULT_BLOCK) -> float:
    """Surface Dice at tolerance 0 of two 3D masks (z, y, x), spacing 1.

    Args:
        pred, gt: boolean (or 0/non-zero) volumes of equal shape: numpy arrays, zarr arrays or any
            z-sliceable volume (``nnunet_vasculature.io.volumes``); read ``block`` slices at a time.
        empty_score: returned when both masks are empty (the official code gives NaN, 0/0).
    Returns:
        (matched gt area + matched predicted area) / (gt area + predicted area), equal to
        ``compute_surface_dice_at_tolerance(compute_surface_distances(gt, pred, (1, 1, 1)), 0)``.
        One empty mask and one non-empty mask give 0.
    """
    pred, gt = _check_pair(pred, gt, "prediction", "labels")
    acc = SurfaceDiceAccumulator(gt.shape[1:])
    for z0 in range(0, gt.shape[0], block):
        acc.add(pred[z0:z0 + block], gt[z0:z0 + block])
    return acc.score(empty_score)


def surface_dice_sweep(prob_u8: ZSliceable, gt: ZSliceable, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """Surface Dice of ``prob_u8 >= k`` for every k in 0..255, in one pass over the volume.

    Args:
        prob_u8: uint8 probabilities (z, y, x), 0..255 (numpy, zarr or list of slice files).
        gt: boolean labels of the same shape.
    Returns:
        float64 array of shape (256,); entry k equals ``surface_dice(prob_u8 >= k, gt)``, with 0
        wherever that is 0/0 (empty prediction and empty labels).

    A cube's predicted code depends on how many of its 8 corners reach the threshold, so it changes
    only at its corner values: sorting the corners gives, per cube, at most 8 steps whose effect on
    the numerator and denominator is added to a difference array over the 256 levels.
    """
    prob, gt = _check_pair(prob_u8, gt, "probabilities", "labels")
    h, w = gt.shape[1:]
    d_area = np.zeros(257)       # predicted area, by highest level at which it is present
    d_num = np.zeros(257)        # matched area
    gt_total = 0.0
    prev_g = np.zeros((h + 1, w + 1), dtype=np.uint8)
    prev_q = np.zeros((h + 2, w + 2), dtype=np.uint16)
    starts = list(range(0, gt.shape[0], block))
    for z in starts + [None]:      # None: the closing layer against the zero padding
        if z is not None:
            cg = _plane_codes(np.asarray(gt[z:z + block]) > 0)
            q = _padded_levels(np.asarray(prob[z:z + block]), z)
        else:
            cg = np.zeros((1, h + 1, w + 1), dtype=np.uint8)
            q = np.zeros((1, h + 2, w + 2), dtype=np.uint16)
        codes_g = _cube_codes(cg, prev_g)
        gt_total += np.bincount(codes_g.ravel(), minlength=256) @ AREA
        _sweep_layer(np.concatenate([prev_q[None], q]), codes_g, d_area, d_num)
        prev_g, prev_q = cg[-1], q[-1]
    pred_area = np.cumsum(d_area[::-1])[::-1][:256]
    num = np.cumsum(d_num[::-1])[::-1][:256]
    den = gt_total + pred_area
    out = np.zeros(256)
    np.divide(num, den, out=out, where=den > 0)
    return np.clip(out, 0.0, 1.0)          # the differences summed above leave ~1e-16 below 0 where num is 0


def _padded_levels(p: np.ndarray, z0: int) -> np.ndarray:
    if p.dtype != np.uint8:
        raise ValueError(f"probabilities must be uint8 0..255 (slices from {z0}), got {p.dtype}")
    q = np.zeros((p.shape[0], p.shape[1] + 2, p.shape[2] + 2), dtype=np.uint16)
    q[:, 1:-1, 1:-1] = p
    q[:, 1:-1, 1:-1] += 1          # level+1, so that the padding (0) is below every threshold
    return q


_BITS_U8 = np.array([128, 64, 32, 16, 8, 4, 2, 1], dtype=np.uint8)   # corner i -> its code bit


def _sweep_layer(q: np.ndarray, codes_g: np.ndarray, d_area: np.ndarray, d_num: np.ndarray) -> None:
    """Add the threshold-dependent terms of the cubes between planes q[i] and q[i+1]."""
    corners = [q[:-1, :-1, :-1], q[:-1, :-1, 1:], q[:-1, 1:, :-1], q[:-1, 1:, 1:],
               q[1:, :-1, :-1], q[1:, :-1, 1:], q[1:, 1:, :-1], q[1:, 1:, 1:]]
    # A cube whose corners are all probability 0 (level 1) has code 255 at k = 0 and 0 above: no
    # surface at any threshold. Every other cube is processed (uniform non-zero cubes add net 0).
    nz = q != 1
    win = nz[:, :-1, :-1] | nz[:, :-1, 1:] | nz[:, 1:, :-1] | nz[:, 1:, 1:]
    active = win[:-1] | win[1:]
    if not active.any():
        return
    # sort key: level * 8 + corner index (int16); highest level first after the reversal
    keys = np.empty((int(active.sum()), 8), dtype=np.int16)
    for i, c in enumerate(corners):
        np.multiply(c[active], 8, out=keys[:, i], casting="unsafe")
        keys[:, i] += i
    keys.sort(axis=1)
    keys = keys[:, ::-1]
    codes = np.bitwise_or.accumulate(_BITS_U8[keys & 7], axis=1)  # code once the top m corners are in
    slot = (keys >> 3).astype(np.int32) << 8                     # (level + 1) * 256; padding -> 0
    # predicted area: +A(code_m) - A(code_{m-1}) for every threshold k <= level_m (integer histogram)
    gained = np.bincount((slot + codes).ravel(), minlength=257 * 256)
    lost = np.bincount((slot[:, 1:] + codes[:, :-1]).ravel(), minlength=257 * 256)
    d_area[:256] += ((gained - lost).reshape(257, 256)[1:] @ AREA)
    # matched area: only cubes where the labels have surface
    ag = AREA[codes_g[active]]
    gb = ag > 0
    if gb.any():
        f_area = AREA[codes[gb]]
        f_num = np.where(f_area > 0, ag[gb][:, None] + f_area, 0.0)
        f_num[:, 1:] -= f_num[:, :-1].copy()
        d_num[:256] += np.bincount(slot[gb].ravel() >> 8, weights=f_num.ravel(), minlength=257)[1:]
