"""Kaggle run-length encoding: row-major (C order), 1-based starts, ``"start length"`` pairs.

An empty mask is written ``"1 0"`` (the competition's convention).
"""
from __future__ import annotations

import numpy as np

EMPTY_RLE = "1 0"


def rle_encode(mask2d: np.ndarray) -> str:
    """Encode a 2D mask (anything > 0 is foreground) as a Kaggle RLE string."""
    flat = np.ascontiguousarray(mask2d).reshape(-1)
    flat = flat.view(bool) if flat.dtype == bool else flat > 0
    # run boundaries: positions where the value changes, plus the two ends when they are foreground
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    if edges.size == 0:
        return EMPTY_RLE
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return _join_ints(pairs)


def _join_ints(values: np.ndarray) -> str:
    """``" ".join(map(str, values))`` for non-negative ints, vectorised: the digits are laid out in a
    (n, width) byte matrix and the leading zeros dropped with one boolean mask."""
    width = len(str(int(values.max())))
    powers = 10.0 ** np.arange(width - 1, -1, -1)
    # floor((v + 0.5) / p) == v // p exactly for integers v < 2^52: the quotient is never within
    # 0.5 / p of an integer, far above float64 rounding; float division is much faster than int64
    quot = np.floor((values[:, None] + 0.5) / powers)
    buf = np.empty((len(values), width + 1), dtype=np.uint8)
    buf[:, :width] = quot - 10.0 * np.floor((quot + 0.5) / 10.0) + 48
    buf[:, width] = 32
    keep = np.empty(buf.shape, dtype=bool)
    keep[:, :width] = values[:, None] >= powers
    keep[:, width - 1] = True          # a zero still writes one digit
    keep[:, width] = True
    return buf[keep].tobytes()[:-1].decode("ascii")


def rle_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """0-based run starts and lengths of a Kaggle RLE string; ValueError when malformed."""
    text = str(rle).strip() if rle is not None else ""
    if text in ("", EMPTY_RLE, "nan"):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        nums = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise ValueError("RLE contains non-integer tokens") from None
    if len(nums) % 2:
        raise ValueError("RLE has an odd number of values")
    starts, lengths = nums[0::2] - 1, nums[1::2]
    if (starts < 0).any() or (lengths < 0).any():
        raise ValueError("RLE has a start below 1 or a negative length")
    return starts, lengths


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 mask of ``shape`` (values 0/1).

    Raises ValueError for malformed strings and runs outside the image.
    """
    size = int(np.prod(shape))
    out = np.zeros(size, dtype=np.uint8)
    starts, lengths = rle_runs(rle)
    ends = starts + lengths
    if len(ends) and ends.max() > size:
        raise ValueError(f"RLE run ends at pixel {int(ends.max())}, beyond the {size} pixels of a {shape} slice")
    # difference array: +1 at each start, -1 at each end; overlapping runs still give 1
    diff = np.zeros(size + 1, dtype=np.int32)
    np.add.at(diff, starts, 1)
    np.add.at(diff, ends, -1)
    out[:] = np.cumsum(diff[:-1]) > 0
    return out.reshape(shape)
