"""A binary (z, y, x) volume held bit-packed in memory: 1 bit per voxel, read back a block of planes at a time.

A whole Kaggle kidney (2279 x 1303 x 912 voxels) takes 0.34 GB this way instead of 2.7 GB as ``bool``, so the
metrics that need several passes over a mask (skeleton slabs with halos, the outward nearest-surface search of the
surface distance) read their input once and then work from memory. :meth:`PackedVolume.window` hands a range of
planes to a task (a view in this process; what a dask worker receives when the task runs elsewhere).
"""
from __future__ import annotations

import numpy as np


class PackedVolume:
    """Bit-packed boolean volume; ``vol[z0:z1]`` gives a ``(B, H, W)`` bool array like any z-sliceable volume.

    A window (:meth:`window`) keeps the whole volume's ``shape`` but holds only planes ``start .. start + len(bits)``;
    reading planes outside them raises ``IndexError``.
    """

    def __init__(self, shape: tuple[int, int, int], bits: np.ndarray | None = None, start: int = 0):
        self.shape = tuple(int(s) for s in shape)
        depth, height, width = self.shape
        self.start = int(start)
        self.bits = np.zeros((depth, height, (width + 7) // 8), dtype=np.uint8) if bits is None else bits

    @property
    def stop(self) -> int:
        """One past the last plane held."""
        return self.start + len(self.bits)

    def write(self, z0: int, block: np.ndarray) -> None:
        """Store planes ``z0 .. z0 + len(block)`` (non-zero = foreground).

        Args:
            z0: first plane.
            block: ``(B, H, W)`` array.
        """
        self.bits[z0 - self.start:z0 - self.start + len(block)] = np.packbits(np.asarray(block) != 0, axis=-1)

    def __getitem__(self, sl: slice) -> np.ndarray:
        if not isinstance(sl, slice) or sl.step not in (None, 1):
            raise TypeError("PackedVolume supports z-slices (step 1) only")
        z0, z1, _ = sl.indices(self.shape[0])
        z1 = max(z0, z1)
        if z1 > z0 and (z0 < self.start or z1 > self.stop):
            raise IndexError(f"planes {z0}..{z1} asked of a window of planes {self.start}..{self.stop}")
        return np.unpackbits(self.bits[z0 - self.start:z1 - self.start], axis=-1, count=self.shape[2]).view(bool)

    def padded(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0 .. z1`` where planes outside ``0 .. depth`` are background.

        Args:
            z0, z1: plane range, possibly reaching beyond the volume.
        Returns:
            ``(z1 - z0, H, W)`` bool array.
        """
        out = np.zeros((z1 - z0, *self.shape[1:]), dtype=bool)
        lo, hi = max(z0, 0), min(z1, self.shape[0])
        if hi > lo:
            out[lo - z0:hi - z0] = self[lo:hi]
        return out

    def window(self, z0: int, z1: int) -> PackedVolume:
        """Planes ``z0 .. z1`` (clipped to the volume) as a packed volume of the same ``shape`` (a view).

        Args:
            z0, z1: plane range.
        Returns:
            the window.
        """
        lo, hi = max(z0, self.start), min(z1, self.stop)
        return PackedVolume(self.shape, self.bits[lo - self.start:max(lo, hi) - self.start], lo)

    def box(self, z0: int, z1: int) -> tuple[slice, slice] | None:
        """In-plane box holding all foreground of planes ``z0 .. z1`` (clipped to the planes held): exact rows,
        columns widened to whole bytes (8 voxels); None when those planes are empty.

        Args:
            z0, z1: plane range.
        Returns:
            ``(rows, cols)`` slices, or None.
        """
        bits = self.bits[max(z0, self.start) - self.start:max(min(z1, self.stop) - self.start, 0)]
        rows = np.flatnonzero(bits.any(axis=(0, 2)))
        if not len(rows):
            return None
        cols = np.flatnonzero(bits[:, rows[0]:rows[-1] + 1].any(axis=(0, 1)))
        return (slice(int(rows[0]), int(rows[-1]) + 1),
                slice(8 * int(cols[0]), min(8 * (int(cols[-1]) + 1), self.shape[2])))

    def read(self, z0: int, z1: int, rows: slice, cols: slice) -> np.ndarray:
        """Planes ``z0 .. z1`` restricted to ``rows`` x ``cols``, planes outside ``0 .. depth`` background (as
        :meth:`padded`); only the bytes holding ``cols`` are unpacked.

        Args:
            z0, z1: plane range, possibly reaching beyond the volume.
            rows, cols: in-plane ranges (explicit start and stop).
        Returns:
            bool ``(z1 - z0, rows, cols)``.
        """
        out = np.zeros((z1 - z0, rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        lo, hi = max(z0, 0), min(z1, self.shape[0])
        if hi > lo:
            if lo < self.start or hi > self.stop:
                raise IndexError(f"planes {lo}..{hi} asked of a window of planes {self.start}..{self.stop}")
            b0, b1 = cols.start // 8, -(-cols.stop // 8)
            bits = np.unpackbits(self.bits[lo - self.start:hi - self.start, rows, b0:b1], axis=-1).view(bool)
            out[lo - z0:hi - z0] = bits[..., cols.start - 8 * b0:cols.stop - 8 * b0]
        return out

    def any(self) -> bool:
        """Whether any plane held has foreground."""
        return bool(self.bits.any())


def pack(vol: object, block: int = 32) -> PackedVolume:
    """Read a z-sliceable volume once into a :class:`PackedVolume`.

    Args:
        vol: numpy/zarr array or any object with ``.shape`` and ``vol[z0:z1]``; non-zero is foreground.
        block: planes read at a time.
    Returns:
        the packed volume.
    """
    out = PackedVolume(tuple(vol.shape))
    for z0 in range(0, out.shape[0], block):
        out.write(z0, np.asarray(vol[z0:z0 + block]))
    return out
