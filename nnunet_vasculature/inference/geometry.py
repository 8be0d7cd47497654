"""Where the tiles of a streamed prediction lie: one value computed once per volume and given to the input
side (:class:`~nnunet_vasculature.inference.streaming.ModelInput`) and the output side
(:class:`~nnunet_vasculature.inference.streaming.BackResampler`) of
:class:`~nnunet_vasculature.inference.streaming.StreamingPredictor`.

Three grids, as stock nnU-Net walks them for a whole volume:

- the input grid (z, y, x) of the volume read; the crop box (``crop_to_nonzero``) is a range per axis;
- the crop in model axes (``transpose_forward`` applied; z stays first), ``crop_shape``;
- the model grid: the crop resampled to the model's spacing (``model_shape``), zero-padded to at least the
  patch (``padded_shape``, the data starting at ``pad_before``), on which nnU-Net's sliding-window tiles
  start at ``tile_starts`` (per axis, ``compute_steps_for_sliding_window``).

"Model plane" m is plane m of the model grid (unpadded); "padded plane" p = m + ``pad_before[0]``;
"crop plane" c is plane c of the crop (input plane ``crop_box[0][0] + c``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference import nnunet_compat as compat

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class StreamingGeometry:
    """The crop, resampling, padding and tile grid of one volume (see the module's description)."""
    input_shape: tuple[int, int, int]           # (depth, height, width) of the input volume
    crop_box: Box                               # [start, stop) per input axis: the non-zero voxels
    transpose_forward: tuple[int, int, int]     # input axes -> model axes (z first)
    transpose_backward: tuple[int, int, int]
    crop_shape: tuple[int, int, int]            # the crop in model axes
    model_shape: tuple[int, int, int]           # the crop resampled to the model's spacing
    padded_shape: tuple[int, int, int]          # model_shape padded to at least the patch
    pad_before: tuple[int, int, int]            # where the model grid starts in the padded grid
    patch: tuple[int, int, int]
    tile_starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]   # per axis, padded coordinates
    data_resampling: compat.Resampling          # input crop -> model grid
    probability_resampling: compat.Resampling   # model grid -> input crop

    @classmethod
    def plan(cls, input_shape: Sequence[int], input_spacing: Sequence[float], crop_box: Sequence[Sequence[int]],
             transpose_forward: Sequence[int], transpose_backward: Sequence[int], model_spacing: Sequence[float],
             patch: Sequence[int], step_size: float, data_resampling_kwargs: dict,
             probability_resampling_kwargs: dict, where: str = "volume") -> StreamingGeometry:
        """The geometry stock nnU-Net gives a volume (``compute_new_shape``, its padding and
        ``compute_steps_for_sliding_window``).

        Args:
            input_shape: (depth, height, width) of the input.
            input_spacing: its voxel size per input axis.
            crop_box: the non-zero box per input axis (``nonzero_bbox_and_stats``).
            transpose_forward: the plans' ``transpose_forward`` (z must stay first).
            transpose_backward: the plans' ``transpose_backward``.
            model_spacing: the spacing the model predicts at (model axes).
            patch: the patch size (model axes).
            step_size: the sliding-window step, a fraction of the patch.
            data_resampling_kwargs: the configuration's ``resampling_fn_data_kwargs``.
            probability_resampling_kwargs: the configuration's ``resampling_fn_probabilities_kwargs``.
            where: what an error names.

        Returns:
            The geometry.
        """
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
        forward = tuple(int(t) for t in transpose_forward)
        crop_box = tuple((int(a), int(b)) for a, b in crop_box)
        input_spacing_model_axes = [input_spacing[i] for i in forward]
        model_spacing = list(model_spacing)
        crop_extent = np.array([stop - start for start, stop in crop_box])
        crop_shape = tuple(int(n) for n in crop_extent[list(forward)])
        model_shape = tuple(int(s) for s in compute_new_shape(crop_shape, input_spacing_model_axes, model_spacing))
        data_resampling = compat.Resampling.from_kwargs(data_resampling_kwargs, input_spacing_model_axes,
                                                        model_spacing)
        probability_resampling = compat.Resampling.from_kwargs(probability_resampling_kwargs, model_spacing,
                                                               input_spacing_model_axes)
        if any(r.separate_z and r.axis != 0 for r in (data_resampling, probability_resampling)):
            raise UserError(f"{where}: anisotropic resampling along a non-z axis is not supported")
        padded_shape, pad_before = compat.pad_to_patch(model_shape, tuple(patch))
        tile_starts = compute_steps_for_sliding_window(padded_shape, tuple(patch), step_size)
        return cls(tuple(int(n) for n in input_shape), crop_box, forward,
                   tuple(int(t) for t in transpose_backward), crop_shape, model_shape, tuple(padded_shape),
                   tuple(pad_before), tuple(int(p) for p in patch),
                   tuple(tuple(int(s) for s in axis) for axis in tile_starts), data_resampling,
                   probability_resampling)

    @property
    def resampled(self) -> bool:
        """Whether the model grid differs from the crop (else both resamplings are the identity)."""
        return tuple(self.crop_shape) != tuple(self.model_shape)

    def crop_planes(self, first_input_plane: int, end_input_plane: int) -> tuple[int, int]:
        """Crop planes [first, end) of input planes [first_input_plane, end_input_plane) (empty: first >= end).

        Args:
            first_input_plane: first input plane wanted.
            end_input_plane: end of the input planes wanted.

        Returns:
            The crop planes' range.
        """
        crop_start, crop_stop = self.crop_box[0]
        return max(0, first_input_plane - crop_start), min(end_input_plane, crop_stop) - crop_start

    def model_planes_of_crop_plane(self, crop_plane: int) -> tuple[int, int]:
        """Model planes [a, b) crop plane ``crop_plane`` is interpolated from (``b`` may pass the last one).

        Args:
            crop_plane: a plane of the crop.

        Returns:
            The model planes' range.
        """
        if not self.resampled:
            return crop_plane, crop_plane + 1
        return compat.input_range(crop_plane, crop_plane + 1, self.model_shape[0], self.crop_shape[0],
                                  self.probability_resampling.z_order)

    def first_model_plane(self, crop_plane: int) -> int:
        """The first model plane crop plane ``crop_plane`` needs."""
        return self.model_planes_of_crop_plane(crop_plane)[0]

    def last_model_plane(self, crop_plane: int) -> int:
        """The last model plane crop plane ``crop_plane`` needs."""
        return min(self.model_planes_of_crop_plane(crop_plane)[1], self.model_shape[0]) - 1

    def tile_rows(self, first_crop_plane: int, end_crop_plane: int) -> tuple[list[int], int]:
        """The tile rows (z starts, padded coordinates) that crop planes [first, end) need, and the last
        padded plane they need (later rows do not touch it).

        Args:
            first_crop_plane: first crop plane wanted.
            end_crop_plane: end of the crop planes wanted (> first).

        Returns:
            (row starts, last padded plane).
        """
        need = self.first_model_plane(first_crop_plane) + self.pad_before[0]
        last = self.last_model_plane(end_crop_plane - 1) + self.pad_before[0]
        rows = [s for s in self.tile_starts[0] if s + self.patch[0] > need and s <= last]
        return rows, last

    def to_input_axes(self, plane: np.ndarray) -> np.ndarray:
        """One (y, x) plane in model axes -> input axes (``transpose_backward``; z stays first).

        Args:
            plane: a plane of the crop in model axes.

        Returns:
            The plane in input axes (a view).
        """
        return plane.transpose([t - 1 for t in self.transpose_backward[1:]])

    def to_model_axes(self, planes: np.ndarray) -> np.ndarray:
        """(n, y, x) input-axes planes -> model axes (``transpose_forward``).

        Args:
            planes: planes of the input.

        Returns:
            The planes in model axes (a view).
        """
        return planes.transpose(self.transpose_forward)

    def describe(self) -> dict[str, Any]:
        """Plain values for reports (``--dry_run``)."""
        return {"crop_box": [list(b) for b in self.crop_box], "crop_shape": list(self.crop_shape),
                "model_shape": list(self.model_shape), "padded_shape": list(self.padded_shape),
                "tiles": int(np.prod([len(s) for s in self.tile_starts]))}


__all__ = ["StreamingGeometry"]
