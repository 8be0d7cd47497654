"""A binary (z, y, x) volume held bit-packed in memory: 1 bit per voxel, read back a block of planes at a time.

A whole Kaggle kidney (2279 x 1303 x 912 voxels) takes 0.34 GB this way instead of 2.7 GB as ``bool``, so the
metrics that need several passes over a mask (skeleton slabs with halos, the outward nearest-surface search of the
surface distance) read their input once and then work from memory.
"""
from __future__ import annotations

import numpy as np


class PackedVolume:
    """Bit-packed boolean volume; ``vol[z0:z1]`` gives a ``(B, H, W)`` bool array like any z-sliceable volume."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = tuple(int(s) for s in shape)
        depth, height, width = self.shape
        self.bits = np.zeros((depth, height, (width + 7) // 8), dtype=np.uint8)

    def write(self, z0: int, block: np.ndarray) -> None:
        """Store planes ``z0 .. z0 + len(block)`` (non-zero = foreground).

        Args:
            z0: first plane.
            block: ``(B, H, W)`` array.
        """
        self.bits[z0:z0 + len(block)] = np.packbits(np.asarray(block) != 0, axis=-1)

    def __getitem__(self, sl: slice) -> np.ndarray:
        if not isinstance(sl, slice):
            raise TypeError("PackedVolume supports z-slices only")
        return np.unpackbits(self.bits[sl], axis=-1, count=self.shape[2]).view(bool)

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
