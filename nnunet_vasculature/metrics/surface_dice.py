"""Surface Dice at tolerance 0, exactly as the Kaggle metric (DeepMind ``surface-distance``).

Every 2x2x2 cube of the zero-padded volume gets an 8-bit neighbour code from its corners and, from
a marching-cubes table, a surface area. At tolerance 0 a cube's area is "matched" when the other
mask has surface in the very same cube, so the score is a sum over cubes and the volume can be
streamed a few slices at a time: memory is O(slice), not O(volume).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunet_vasculature.metrics.area_table import AREA

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
    """Streaming surface Dice: feed consecutive z-blocks of prediction and labels, then ``score()``.

    Each voxel of a block becomes a 2-bit value (labels << 1 | prediction) in a zero-padded byte volume whose rows
    are read as 64-bit words, 8 voxels a word: shifts and ORs of whole words give every cube's 16-bit pair code
    (8 corners x 2 bits), 8 cubes at a time, and only the words holding a cube with a foreground corner are
    counted. The counts (:attr:`hist`) are those of the per-cube codes, so the score is exactly theirs.
    """

    def __init__(self, plane_shape: tuple[int, int]):
        h, w = plane_shape
        self.plane_shape = (h, w)
        self.words = -(-(w + 2) // 8)                    # 8-voxel words per padded row (W + 2 voxels at least)
        self.plane_words = (h + 2) * self.words          # rows 0 and H + 1: the zero padding
        self.chunk = max(1, _CHUNK_BYTES // (8 * self.plane_words))     # planes at a time (they stay in cache)
        self.pairs = np.zeros(65536, dtype=np.int64)    # cube counts by pair code
        self.prev = np.zeros(self.plane_words, dtype=_WORD)   # pair codes of the last plane, 8 per word
        # the padded 2-bit volume of `chunk` planes, after 8 zero bytes: read from byte 7 on, each word holds
        # its voxels' left neighbours
        self.buffer = np.zeros(8 + 8 * self.plane_words * min(self.chunk, DEFAULT_BLOCK), dtype=np.uint8)
        self.closed = False

    @property
    def hist(self) -> np.ndarray:
        """Counts of (gt code, pred code) cube pairs at index ``gt * 256 + pred`` (65536; the pair 0, 0 not counted)."""
        out = np.empty(65536, dtype=np.int64)
        out[_OLD_OF_PAIR] = self.pairs
        out[0] = 0
        return out

    @hist.setter
    def hist(self, value: np.ndarray) -> None:
        self.pairs = np.asarray(value, dtype=np.int64)[_OLD_OF_PAIR]

    @property
    def prev_g(self) -> np.ndarray:
        """The last plane's 4-bit in-plane codes of the labels (as ``_plane_codes(...)[-1]``), (H + 1, W + 1)."""
        return _SPLIT_G[self._prev_bytes()]

    @prev_g.setter
    def prev_g(self, codes: np.ndarray) -> None:
        self._set_prev(codes, self.prev_p)

    @property
    def prev_p(self) -> np.ndarray:
        """The same of the prediction."""
        return _SPLIT_P[self._prev_bytes()]

    @prev_p.setter
    def prev_p(self, codes: np.ndarray) -> None:
        self._set_prev(self.prev_g, codes)

    def _prev_bytes(self) -> np.ndarray:
        h, w = self.plane_shape
        return self.prev.view(np.uint8).reshape(h + 2, 8 * self.words)[:h + 1, 1:w + 2]

    def _set_prev(self, codes_g: np.ndarray, codes_p: np.ndarray) -> None:
        prev = np.zeros(8 * self.plane_words, dtype=np.uint8)
        h, w = self.plane_shape
        joined = _JOIN[(np.asarray(codes_g, np.uint8) << 4) | np.asarray(codes_p, np.uint8)]
        prev.reshape(h + 2, 8 * self.words)[:h + 1, 1:w + 2] = joined
        self.prev = prev.view(_WORD)

    def add(self, pred_block: np.ndarray, gt_block: np.ndarray) -> None:
        """Add the next planes.

        Args:
            pred_block, gt_block: (B, H, W) prediction and labels (boolean, or foreground where > 0).
        """
        g, p = _mask_bytes(gt_block), _mask_bytes(pred_block)
        h, w = self.plane_shape
        for a in range(0, g.shape[0], self.chunk):
            b = min(a + self.chunk, g.shape[0])
            n = 8 * self.plane_words * (b - a)
            if len(self.buffer) < 8 + n:
                self.buffer = np.zeros(8 + n, dtype=np.uint8)
            inner = self.buffer[8:8 + n].reshape(b - a, h + 2, 8 * self.words)[:, 1:h + 1, 1:w + 1]
            np.add(g[a:b], g[a:b], out=inner)       # labels in bit 1, prediction in bit 0
            np.bitwise_or(inner, p[a:b], out=inner)
            self._add_planes(self.buffer[8:8 + n].view(_WORD), self.buffer[7:7 + n].view(_WORD))

    def _add_planes(self, voxels: np.ndarray, left: np.ndarray) -> None:
        """Count the cubes of the padded planes whose words are ``voxels`` (``left``: their left neighbours)."""
        row = left << 2
        row |= voxels                               # 4 bits: (x - 1, x)
        size = self.plane_words
        planes = np.empty(size + len(row), dtype=_WORD)
        planes[:size] = self.prev
        new = planes[size:]
        np.left_shift(row, 4, out=new)
        new[:-self.words] |= row[self.words:]       # 8 bits: (y - 1, x - 1), (y - 1, x), (y, x - 1), (y, x)
        _count_pairs(self.pairs, planes[:-size], planes[size:])
        self.prev = planes[-size:].copy()

    def counts(self) -> tuple[float, float, float, float]:
        """The four areas, the volume closed (its last plane against the zero padding) at the first call.

        Returns:
            (matched gt area, matched pred area, gt area, pred area).
        """
        if not self.closed:
            _count_pairs(self.pairs, self.prev, np.zeros_like(self.prev))
            self.closed = True
        hist = self.hist
        matched = hist * _PAIR_MATCH
        return (float(matched @ _PAIR_AREA_G), float(matched @ _PAIR_AREA_P),
                float(hist @ _PAIR_AREA_G), float(hist @ _PAIR_AREA_P))

    def score(self, empty_score: float = float("nan")) -> float:
        """The surface Dice of the planes added.

        Args:
            empty_score: the value when both masks are empty.

        Returns:
            (matched gt area + matched pred area) / (gt area + pred area).
        """
        mg, mp, ag, ap = self.counts()
        return empty_score if ag + ap == 0 else (mg + mp) / (ag + ap)


# The word layout: byte k of a little-endian 64-bit word is voxel (or cube) column 8 * word + k. A cube's pair
# code holds its 8 corners in DeepMind's order (z, y, x; corner i = the bit of weight 128 >> i), 2 bits each
# (labels << 1 | prediction), corner 0 in the top 2 bits; an in-plane code is a byte, 4 corners.
_WORD = np.dtype("<u8")
_CHUNK_BYTES = 4 << 20


def _pair_index_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    code = np.arange(65536)
    g = np.zeros(65536, dtype=np.int64)
    p = np.zeros(65536, dtype=np.int64)
    for i in range(8):
        v = (code >> (2 * (7 - i))) & 3
        g |= (v >> 1) << (7 - i)
        p |= (v & 1) << (7 - i)
    plane = np.arange(256)               # one plane's pair byte (4 corners x 2 bits) <-> its two 4-bit codes
    split_g = np.zeros(256, dtype=np.uint8)
    split_p = np.zeros(256, dtype=np.uint8)
    for j in range(4):
        v = (plane >> (2 * (3 - j))) & 3
        split_g |= ((v >> 1) << (3 - j)).astype(np.uint8)
        split_p |= ((v & 1) << (3 - j)).astype(np.uint8)
    join = np.zeros(256, dtype=np.uint8)
    join[(split_g.astype(np.int64) << 4) | split_p] = plane
    return g * 256 + p, split_g, split_p, join


_OLD_OF_PAIR, _SPLIT_G, _SPLIT_P, _JOIN = _pair_index_tables()


def _mask_bytes(block: np.ndarray) -> np.ndarray:
    """A block as 0/1 bytes (foreground: > 0), without a copy when it is boolean."""
    block = np.asarray(block)
    return (block if block.dtype == bool else block > 0).view(np.uint8)


def _count_pairs(pairs: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> None:
    """Add the cube pair codes between plane codes ``upper`` (z - 1) and ``lower`` (z): only the words where a
    cube has a corner in either mask are read."""
    both = upper | lower
    active = np.flatnonzero(both != 0)          # (faster than on the words themselves)
    if not len(active):
        return
    hi = upper.reshape(-1)[active].view(np.uint8).astype(np.uint16)
    hi <<= 8
    hi |= lower.reshape(-1)[active].view(np.uint8)
    pairs += np.bincount(hi, minlength=65536)


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


def surface_dice_sweep(prob_u8: ZSliceable, gt: ZSliceable, block: int = DEFAULT_BLOCK, workers: int = 1) -> np.ndarray:
    """Surface Dice of ``prob_u8 >= k`` for every k in 0..255, in one pass over the volume.

    Args:
        prob_u8: uint8 probabilities (z, y, x), 0..255 (numpy, zarr or list of slice files).
        gt: boolean labels of the same shape.
        block: planes read at a time.
        workers: blocks processed at once (threads; numpy and the readers' decoders release the GIL).
    Returns:
        float64 array of shape (256,); entry k equals ``surface_dice(prob_u8 >= k, gt)``, with 0
        wherever that is 0/0 (empty prediction and empty labels).

    A cube's predicted code depends on how many of its 8 corners reach the threshold, so it changes
    only at its corner values: sorting the corners gives, per cube, at most 8 steps whose effect on
    the numerator and denominator is added to a difference array over the 256 levels.
    """
    return sweep_with_levels(prob_u8, gt, block, workers)[0]


def sweep_with_levels(prob_u8: ZSliceable, gt: ZSliceable, block: int = DEFAULT_BLOCK,
                      workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_dice_sweep` and the voxel count of each uint8 level, from the same single read.

    Args:
        prob_u8, gt, block, workers: as :func:`surface_dice_sweep`.
    Returns:
        (the 256 surface Dice values, the 256 level counts as ``morphology.level_histogram``).

    Each block is read with the plane before it, so blocks are independent tasks; their sums are added in block
    order, which gives the values of one sequential pass exactly, whatever ``workers``.
    """
    prob, gt = _check_pair(prob_u8, gt, "probabilities", "labels")
    d_area = np.zeros(257)       # predicted area, by highest level at which it is present
    d_num = np.zeros(257)        # matched area
    gt_total = 0.0
    levels = np.zeros(256, np.int64)
    starts = list(range(0, gt.shape[0], block)) + [gt.shape[0]]    # the last: the closing layer
    with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        for area, num, gt_area, counts in (pool.map if pool else map)(lambda z: _sweep_block(prob, gt, z, block),
                                                                      starts):
            d_area += area
            d_num += num
            gt_total += gt_area
            levels += counts
    pred_area = np.cumsum(d_area[::-1])[::-1][:256]
    num = np.cumsum(d_num[::-1])[::-1][:256]
    den = gt_total + pred_area
    out = np.zeros(256)
    np.divide(num, den, out=out, where=den > 0)
    # the differences summed above leave ~1e-16 below 0 where num is 0
    return np.clip(out, 0.0, 1.0), levels


def _sweep_block(prob: ZSliceable, gt: ZSliceable, z: int, block: int) -> tuple[np.ndarray, np.ndarray, float,
                                                                                 np.ndarray]:
    """The sweep's sums of the cube layers from plane ``z - 1`` to the planes ``z .. z + block`` (at ``z`` = the
    depth: the closing layer against the zero padding), and the level counts of those planes."""
    depth, h, w = gt.shape
    d_area, d_num, counts = np.zeros(257), np.zeros(257), np.zeros(256, np.int64)
    b = min(block, depth - z)
    q = np.zeros((b + 1 if b else 2, h + 2, w + 2), dtype=np.uint16)     # level + 1, zero padding; q[0]: z - 1
    g = np.zeros((len(q), h, w), dtype=bool)
    if z > 0:
        _fill_levels(q[0:1], prob[z - 1:z], z - 1)
        g[0] = _mask(gt[z - 1:z])[0]
    if b:
        p = _fill_levels(q[1:], prob[z:z + b], z)
        g[1:] = _mask(gt[z:z + b])
        nonzero = p[p != 0]
        counts += np.bincount(nonzero, minlength=256)
        counts[0] += p.size - len(nonzero)
    cg = _plane_codes(g)                       # at z = 0, g[0] and q[0] are the zero padding before the volume
    codes_g = _cube_codes(cg[1:], cg[0])
    surface = codes_g[codes_g != 0]            # code 0 has no area: counting the others is the same sum
    gt_area = float(np.bincount(surface, minlength=256) @ AREA)
    _sweep_layer(q, codes_g, d_area, d_num)
    return d_area, d_num, gt_area, counts


def _mask(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block)
    return block if block.dtype == bool else block > 0


def _fill_levels(q: np.ndarray, p: np.ndarray, z0: int) -> np.ndarray:
    """Write level + 1 of the uint8 planes ``p`` inside the padding of ``q``; returns ``p`` as an array."""
    p = np.asarray(p)
    if p.dtype != np.uint8:
        raise ValueError(f"probabilities must be uint8 0..255 (slices from {z0}), got {p.dtype}")
    inner = q[:, 1:-1, 1:-1]
    inner[...] = p
    inner += 1          # level+1, so that the padding (0) is below every threshold
    return p


_BITS_U8 = np.array([128, 64, 32, 16, 8, 4, 2, 1], dtype=np.uint8)   # corner i -> its code bit


def _sweep_layer(q: np.ndarray, codes_g: np.ndarray, d_area: np.ndarray, d_num: np.ndarray) -> None:
    """Add the threshold-dependent terms of the cubes between planes q[i] and q[i+1]."""
    # A cube whose corners are all probability 0 (level 1) has code 255 at k = 0 and 0 above: no
    # surface at any threshold. Every other cube is processed (uniform non-zero cubes add net 0).
    nz = q != 1
    win = nz[:, :-1, :-1] | nz[:, :-1, 1:] | nz[:, 1:, :-1] | nz[:, 1:, 1:]
    active = np.flatnonzero(win[:-1] | win[1:])          # cubes (z, y, x) of shape (B, H + 1, W + 1), C order
    if not len(active):
        return
    _, h2, w2 = q.shape
    z, rest = np.divmod(active, (h2 - 1) * (w2 - 1))
    y, x = np.divmod(rest, w2 - 1)
    base = (z * h2 + y) * w2 + x                          # the cube's first corner in q
    flat = q.reshape(-1)
    # sort key: level * 8 + corner index (int16); highest level first after the reversal
    keys = np.empty((len(active), 8), dtype=np.int16)
    for i, offset in enumerate((0, 1, w2, w2 + 1, h2 * w2, h2 * w2 + 1, h2 * w2 + w2, h2 * w2 + w2 + 1)):
        np.multiply(flat[base + offset], 8, out=keys[:, i], casting="unsafe")
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
    ag = AREA[codes_g.reshape(-1)[active]]
    gb = ag > 0
    if gb.any():
        f_area = AREA[codes[gb]]
        f_num = np.where(f_area > 0, ag[gb][:, None] + f_area, 0.0)
        f_num[:, 1:] -= f_num[:, :-1].copy()
        d_num[:256] += np.bincount(slot[gb].ravel() >> 8, weights=f_num.ravel(), minlength=257)[1:]
