"""Kaggle run-length encoding: 1-based starts, ``"start length"`` pairs.

``order="C"`` (default) numbers pixels along rows (SenNet); ``order="F"`` down the columns first
(HuBMAP Hacking the Kidney: decode with ``reshape((width, height)).T``). An empty mask is written
``"1 0"`` by default (SenNet's convention); ``empty=""`` writes what the HuBMAP kernels write.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

EMPTY_RLE = "1 0"


def rle_encode(mask2d: np.ndarray, order: str = "C", empty: str = EMPTY_RLE) -> str:
    """Encode a 2D mask (anything > 0 is foreground) as a Kaggle RLE string, pixels numbered in
    ``order`` ("C" row-major, "F" column-major)."""
    _check_order(order)
    flat = np.ascontiguousarray(mask2d if order == "C" else np.asarray(mask2d).T).reshape(-1)
    flat = flat.view(bool) if flat.dtype == bool else flat > 0
    # run boundaries: positions where the value changes, plus the two ends when they are foreground
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    if edges.size == 0:
        return empty
    return _pairs_text(edges[0::2], edges[1::2])


def _check_order(order: str) -> None:
    if order not in ("C", "F"):
        raise ValueError(f"RLE order must be 'C' (row-major) or 'F' (column-major), not {order!r}")


def _pairs_text(starts: np.ndarray, ends: np.ndarray) -> str:
    """``"start length ..."`` of 0-based [start, end) runs."""
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return _join_ints(pairs)


class ColumnStripEncoder:
    """Column-major RLE of a mask given as vertical strips (full-height column blocks), left to right.

    Runs continue across strips, so ``add(mask[:, a:b])`` for consecutive blocks then ``finish()``
    equals ``rle_encode(mask, order="F")``; only one strip and the text so far are in memory."""

    def __init__(self, height: int, empty: str = EMPTY_RLE):
        self.height, self.empty = int(height), empty
        self.pos = 0                 # 0-based column-major index of the next pixel
        self.open: int | None = None  # start of a run still going at the end of the last strip
        self.parts: list[str] = []

    def add(self, strip: np.ndarray) -> None:
        if strip.ndim != 2 or strip.shape[0] != self.height:
            raise ValueError(f"strip of shape {strip.shape}: expected ({self.height}, columns)")
        flat = np.ascontiguousarray(np.asarray(strip).T).reshape(-1)
        flat = flat.view(bool) if flat.dtype == bool else flat > 0
        if flat.size == 0:
            return
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        if flat[0] != (self.open is not None):
            edges = np.concatenate(([0], edges))
        edges = edges + self.pos
        if self.open is not None:                   # first edge closes the open run
            edges = np.concatenate(([self.open], edges))
            self.open = None
        if len(edges) % 2:
            self.open = int(edges[-1])
            edges = edges[:-1]
        if len(edges):
            self.parts.append(_pairs_text(edges[0::2], edges[1::2]))
        self.pos += flat.size

    def finish(self) -> str:
        if self.open is not None:
            self.parts.append(_pairs_text(np.array([self.open]), np.array([self.pos])))
            self.open = None
        return " ".join(self.parts) if self.parts else self.empty


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
    except OverflowError:
        raise ValueError("RLE holds a number beyond 64 bits") from None
    if len(nums) % 2:
        raise ValueError("RLE has an odd number of values")
    starts, lengths = nums[0::2] - 1, nums[1::2]
    if (starts < 0).any() or (lengths < 0).any():
        raise ValueError("RLE has a start below 1 or a negative length")
    return starts, lengths


def rle_decode(rle: str, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 mask of ``shape`` = (height, width) (values 0/1), pixels
    numbered in ``order`` ("C" row-major, "F" column-major).

    Raises ValueError for malformed strings and runs outside the image.
    """
    _check_order(order)
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
    return out.reshape(shape, order=order)


def column_major_regions(rle: str, height: int, width: int) -> Callable[[int, int, int, int], np.ndarray]:
    """``region(y0, y1, x0, x1)`` -> uint8 0/1 of a column-major RLE mask of (height, width), without ever
    decoding the whole mask: runs are split at column ends once, and a region paints only the pieces of
    its columns. ValueError for malformed RLE and runs past the image."""
    starts, lengths = rle_runs(rle)
    ends = starts + lengths
    if len(ends) and ends.max() > height * width:
        raise ValueError(f"RLE runs past the image (pixel {int(ends.max())} of {height * width} = "
                         f"{width} x {height})")
    keep = lengths > 0
    starts, ends = starts[keep], ends[keep]
    c0, c1 = starts // height, (ends - 1) // height
    n = c1 - c0 + 1                     # one piece per (run, column): a run may wrap into the next columns
    rid = np.repeat(np.arange(len(starts)), n)
    col = c0[rid] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    ys = np.where(col == c0[rid], starts[rid] - col * height, 0)
    ye = np.where(col == c1[rid], ends[rid] - col * height, height)
    order = np.argsort(col, kind="stable")
    col, ys, ye = col[order], ys[order], ye[order]

    def region(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        a, b = np.searchsorted(col, [x0, x1])
        c, s, e = col[a:b] - x0, np.clip(ys[a:b], y0, y1) - y0, np.clip(ye[a:b], y0, y1) - y0
        ok = e > s
        diff = np.zeros((y1 - y0 + 1, x1 - x0), np.int32)
        np.add.at(diff, (s[ok], c[ok]), 1)
        np.add.at(diff, (e[ok], c[ok]), -1)
        return (np.cumsum(diff[:-1], axis=0) > 0).astype(np.uint8)
    return region


def allow_long_csv_fields() -> None:
    """Let the csv module read whole-slide RLEs (megabytes per field; its default limit is 128 KiB)."""
    import csv
    import sys
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
