"""The tissue mask of a volume, measured before prediction, and the sliding-window tiles it lets the predictor skip.

A HiP-CT kidney fills part of its field: the rest is mounting medium (or, outside the reconstructed disc, zeros),
and every tile there costs a network pass like one through the kidney. :meth:`TissueMask.measure` reads one plane
in every ``stride[0]`` (a strided read: a fraction of one pass) and averages the non-zero voxels of each
``stride[1]`` x ``stride[2]`` block of those planes into a coarse grid of cells; zeros are no data, as nnU-Net's
``crop_to_nonzero`` takes them. The cell means are split in two by Otsu's threshold
(``skimage.filters.threshold_otsu``) on the raw intensities (nnU-Net's normalisation of the volume is an affine
map of them, so it would not move the split), and the brighter class is tissue: X-ray absorption of tissue is
above that of ethanol, agar or air. The split is only trusted when the darker class is uniform, as a medium is:
the gap between the two classes' medians must be at least :data:`SEPARATION` times the darker class's spread
(1.4826 x its median absolute deviation). The cells are then thresholded halfway between the two medians (Otsu's
own threshold leans into the larger class when the classes are unequal, e.g. a small sample in a large jar,
where the medium's noise would pass it). Otherwise (e.g. a field filled with tissue, where Otsu would cut the
tissue's own grey values in two) every non-zero cell is tissue and no tile is skipped. Holes in the mask are
filled (a dark lumen inside the kidney stays tissue).

A tile is skipped (:func:`tiles_to_run`) when no tissue cell lies in its input box widened by one patch (in
input voxels) plus one cell on every side, i.e. when it lies wholly outside the mask dilated by that much. So
every tile touching a tissue cell runs, and, since the dilation is wider than the probability resampling's
support, every voxel of the undilated mask gets bitwise the probability of a run without the mask: the same
tiles are accumulated in the same order there. Voxels no tile covers any more are background (probability 0).
A tissue fragment thinner than ``stride[0]`` lying wholly between two sampled planes, farther than a patch from
any other tissue, is not seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from nnunet_vasculature.inference.geometry import StreamingGeometry
from nnunet_vasculature.io.volume_source import VolumeSource

SEPARATION = 5.0        # class-median gap / the darker class's robust spread needed to trust the split
CELLS_PER_PATCH = 4     # cells along one patch (in input voxels): the mask's resolution


@dataclass(frozen=True)
class TissueMask:
    """Coarse tissue mask of an input volume: cell (i, j, k) holds input voxels [i·s0, (i+1)·s0) x ... (``stride``
    per input axis), measured on plane ``i·s0 + s0 // 2`` (the last plane for the last cell)."""
    input_shape: tuple[int, int, int]
    stride: tuple[int, int, int]
    cells: np.ndarray                 # bool (ceil(depth / s0), ceil(height / s1), ceil(width / s2))
    threshold: float | None           # Otsu's threshold on the cell means; None: no medium found, all tissue

    @classmethod
    def measure(cls, src: VolumeSource, stride: Sequence[int]) -> TissueMask:
        """Read one plane in ``stride[0]`` of ``src`` and threshold its cell means (see the module's description).

        Args:
            src: the input volume.
            stride: input voxels per cell along z, y and x (each at least 1).

        Returns:
            The mask.
        """
        from skimage.filters import threshold_otsu
        stride = tuple(max(1, int(s)) for s in stride)
        depth, height, width = (int(n) for n in src.shape)
        grid = (-(-depth // stride[0]), -(-height // stride[1]), -(-width // stride[2]))
        means = np.zeros(grid, np.float64)
        valid = np.zeros(grid, bool)
        for i in range(grid[0]):
            z = min(depth - 1, i * stride[0] + stride[0] // 2)
            means[i], valid[i] = _cell_means(src.read(z, z + 1)[0], stride[1:], grid[1:])
        values = means[valid]
        if values.size < 2 or values.min() == values.max():
            return cls((depth, height, width), stride, valid, None)
        split = float(threshold_otsu(values))
        dark, bright = np.median(values[values <= split]), np.median(values[values > split])
        spread = 1.4826 * float(np.median(np.abs(values[values <= split] - dark)))
        if bright - dark < SEPARATION * spread:
            return cls((depth, height, width), stride, valid, None)
        threshold = float(dark + bright) / 2
        cells = ndi.binary_fill_holes(valid & (means > threshold))
        return cls((depth, height, width), stride, cells, threshold)

    @property
    def fraction(self) -> float:
        """Share of the cells that are tissue."""
        return float(self.cells.mean()) if self.cells.size else 0.0

    def voxels(self) -> np.ndarray:
        """The mask on the input grid (bool, ``input_shape``): each cell repeated over its voxels.

        Returns:
            The voxel mask.
        """
        full = self.cells
        for axis, s in enumerate(self.stride):
            full = np.repeat(full, s, axis=axis)
        return full[:self.input_shape[0], :self.input_shape[1], :self.input_shape[2]]


def _cell_means(plane: np.ndarray, stride: Sequence[int], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the non-zero voxels of each ``stride`` block of ``plane`` (0 where none), and where there are any."""
    padded = np.zeros((grid[0] * stride[0], grid[1] * stride[1]), np.float64)
    padded[:plane.shape[0], :plane.shape[1]] = plane
    blocks = padded.reshape(grid[0], stride[0], grid[1], stride[1])
    counts = (blocks != 0).sum(axis=(1, 3))
    sums = blocks.sum(axis=(1, 3))
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0), counts > 0


def cell_stride(patch: Sequence[int], model_spacing: Sequence[float], input_spacing: Sequence[float],
                transpose_forward: Sequence[int]) -> tuple[int, int, int]:
    """Input voxels per mask cell along each input axis: a quarter of the patch's extent there (at least 1).

    Args:
        patch: the patch (model axes).
        model_spacing: the spacing the model predicts at (model axes).
        input_spacing: the input's voxel size (input axes).
        transpose_forward: the plans' ``transpose_forward``.

    Returns:
        The stride per input axis.
    """
    stride = [1, 1, 1]
    for model_axis, input_axis in enumerate(transpose_forward):
        extent = patch[model_axis] * float(model_spacing[model_axis]) / float(input_spacing[input_axis])
        stride[input_axis] = max(1, int(extent // CELLS_PER_PATCH))
    return stride[0], stride[1], stride[2]


def tiles_to_run(geometry: StreamingGeometry, mask: TissueMask) -> np.ndarray:
    """Which tiles of ``geometry`` run: those with a tissue cell in their input box widened by one patch and one
    cell on every side.

    Args:
        geometry: the volume's tile grid.
        mask: its tissue mask (of the same input shape).

    Returns:
        bool (tiles along z, y, x of the model grid): True where the tile runs.
    """
    if tuple(mask.input_shape) != tuple(geometry.input_shape):
        raise ValueError(f"tissue mask of {mask.input_shape} for a volume of {geometry.input_shape}")
    ranges = [None, None, None]          # per model axis: (first cell, end cell) of each tile
    for model_axis, input_axis in enumerate(geometry.transpose_forward):
        scale = geometry.crop_shape[model_axis] / geometry.model_shape[model_axis]
        pad, patch = geometry.pad_before[model_axis], geometry.patch[model_axis]
        crop_start = geometry.crop_box[input_axis][0]
        stride = mask.stride[input_axis]
        widen = math.ceil(patch * scale) + stride
        starts = np.array(geometry.tile_starts[model_axis], np.float64) - pad
        first = np.floor(starts * scale).astype(np.int64) + crop_start - widen
        end = np.ceil((starts + patch) * scale).astype(np.int64) + crop_start + widen
        cells = mask.cells.shape[input_axis]
        ranges[input_axis] = (np.clip(first // stride, 0, cells), np.clip(-(-end // stride), 0, cells))
    table = np.zeros(tuple(n + 1 for n in mask.cells.shape), np.int64)   # summed-area table of the cells
    table[1:, 1:, 1:] = mask.cells.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    (z0, z1), (y0, y1), (x0, x1) = ranges
    z0, z1, y0, y1, x0, x1 = (a.reshape(shape) for a, shape in zip(
        (z0, z1, y0, y1, x0, x1), [(-1, 1, 1)] * 2 + [(1, -1, 1)] * 2 + [(1, 1, -1)] * 2))
    count = (table[z1, y1, x1] - table[z0, y1, x1] - table[z1, y0, x1] - table[z1, y1, x0]
             + table[z0, y0, x1] + table[z0, y1, x0] + table[z1, y0, x0] - table[z0, y0, x0])
    return count.transpose(geometry.transpose_forward) > 0


@dataclass(frozen=True)
class TileCount:
    """The tiles of one volume and how many of them run (the others lie wholly outside the dilated tissue mask)."""
    tiles: int
    run: int
    tissue_fraction: float | None = None       # share of the mask's cells that are tissue (None: no mask)

    @property
    def skipped(self) -> int:
        """Tiles not run."""
        return self.tiles - self.run

    def describe(self) -> str:
        """One line for the log and ``--dry_run``: ``tissue mask: 412 of 1024 tiles skipped (40.2 %), ...``.

        Returns:
            The line.
        """
        if self.tissue_fraction is None:
            return f"tissue mask off: {self.tiles} tiles run"
        share = 100.0 * self.skipped / max(1, self.tiles)
        return (f"tissue mask: {self.skipped} of {self.tiles} tiles skipped ({share:.1f} %), "
                f"{100.0 * self.tissue_fraction:.1f} % of the field is tissue")


def count_tiles(geometry: StreamingGeometry, mask: TissueMask | None) -> TileCount:
    """The tiles of ``geometry`` and how many run with ``mask`` (all without).

    Args:
        geometry: the volume's tile grid.
        mask: its tissue mask, or None.

    Returns:
        The counts.
    """
    tiles = int(np.prod([len(s) for s in geometry.tile_starts]))
    if mask is None:
        return TileCount(tiles, tiles)
    return TileCount(tiles, int(tiles_to_run(geometry, mask).sum()), mask.fraction)


def measure_tiles(src: VolumeSource, geometry: StreamingGeometry, model_spacing: Sequence[float]) -> TileCount:
    """Measure the tissue mask of ``src`` as the streaming predictor does (same cells, so the same mask) and count
    the tiles of ``geometry`` that would run (``predict --dry_run``: a strided read of the input, no network).

    Args:
        src: the input volume.
        geometry: its tile grid.
        model_spacing: the spacing the model predicts at (model axes; the configuration's divided by ``tta_scale``).

    Returns:
        The counts.
    """
    stride = cell_stride(geometry.patch, model_spacing, src.spacing, geometry.transpose_forward)
    return count_tiles(geometry, TissueMask.measure(src, stride))


__all__ = ["SEPARATION", "TissueMask", "cell_stride", "tiles_to_run", "TileCount", "count_tiles", "measure_tiles"]
