"""nnU-Net sliding-window prediction streamed along z, with host memory independent of volume depth.

The tiles are exactly those stock nnU-Net places on the whole (cropped, resampled, padded) volume
(``compute_steps_for_sliding_window``) and are aggregated with the same Gaussian weights; they are
just visited in z order, and a model-space plane is finished (divided, resampled back, converted to a
probability and written) as soon as no later tile touches it. Memory: one row of tiles
(patch depth x padded height x width, per class) plus the resampling halo. With ``tta_scale`` s the
model-space grid is s times finer along each axis (configuration spacing / s): s² the row buffers and
about s³ the tiles; the halo (in input planes) is unchanged.

Overlap (``overlap=True``, the default): the next rows' input is read, cropped, normalised and resampled
in one background thread and finished planes are resampled back, converted and written in another
(:mod:`nnunet_vasculature.inference.pipeline`), while the calling thread runs the network; on CUDA the
input windows are in pinned host memory and copied with ``non_blocking``. Each model-space input plane
is prepared once, and each input plane is read, normalised and resized in-plane once (the resampling
halo shared by neighbouring blocks is kept, not recomputed). The planes are bitwise those of
``overlap=False`` (everything in the calling thread, in order). Memory added by the overlap, with queue
depth d: d + 1 input windows (patch depth x padded height x width, float32: d queued, one being built)
and d + 1 blocks of finished model planes (step planes x classes x height x width, float32: d queued,
one being written) beyond the one of each a serial run holds.

nnU-Net's own code is called wherever the streaming design allows it (the predictor's model loading
and mirroring TTA, ``compute_new_shape``, ``compute_steps_for_sliding_window``, ``compute_gaussian``,
the CT/no normalisation classes, the label manager's nonlinearity); what needs the whole volume in stock
nnU-Net (cropping box, z-score statistics, resampling, padding) is re-implemented in
:mod:`nnunet_vasculature.inference.nnunet_compat` and tested against the stock predictor.

Supported plans: a 3D configuration (no cascade) on one channel, ZScore/CT/no normalisation without
``use_mask_for_norm``, nnU-Net's default resampling functions, and a ``transpose_forward`` that keeps z
first (``[0, 1, 2]`` or ``[0, 2, 1]``): planes are streamed along the input's z, so a transpose that
moves another axis to the front would need the whole volume and is refused, as is separate-z
resampling along an axis other than z.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference import nnunet_compat as compat
from nnunet_vasculature.inference.geometry import StreamingGeometry
from nnunet_vasculature.inference.model import load_model, resolve_device
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.pipeline import Prefetch, Writer
from nnunet_vasculature.inference.tissue import TileCount, TissueMask, cell_stride, count_tiles, tiles_to_run
from nnunet_vasculature.inference.tta import TileTTA, check_scale
from nnunet_vasculature.io.volume_source import VolumeSource

Sink = Callable[[int, np.ndarray], None]      # (first original z, probabilities (n, y, x) float32)
Progress = Callable[[int], object]            # called with the number of tiles just predicted
PlaneReader = Callable[[int, int], np.ndarray]   # planes [a, b) -> (b - a, y, x)
Normalizer = Callable[[np.ndarray], np.ndarray]
Nonlinearity = Callable[[np.ndarray], np.ndarray]   # logits (C, y, x) -> foreground probability (y, x)
BACKGROUND_LOGIT = 1e4     # exp(-2e4) is 0 in float32: a probability of exactly 0
Scan = tuple  # (crop box [(z0, z1), (y0, y1), (x0, x1)] or None, intensity statistics dict or None)


class StreamingPredictor:
    def __init__(self, options: PredictionOptions, device: torch.device | str = torch.device("cpu"),
                 overlap: bool = True, queue_depth: int = 1):
        """A predictor for ``options`` (the model, nnU-Net's mirroring, the step, the extra test-time options of
        :mod:`nnunet_vasculature.inference.tta` and the tissue mask of :mod:`nnunet_vasculature.inference.tissue`).

        Args:
            options: the prediction options; the model is loaded by
                :func:`~nnunet_vasculature.inference.model.load_model`.
            device: where the networks run.
            overlap: prepare input and write planes in background threads (False: everything in the calling
                thread, in order; same planes).
            queue_depth: rows of input prepared ahead, blocks of finished planes waiting to be written.
        """
        model_folder = Path(options.model_folder)
        device = resolve_device(device) if isinstance(device, str) else device
        self.options = options
        self.model = load_model(model_folder, list(options.folds), options.checkpoint, device, options.tta,
                                options.step_size)
        self.device, self.step = device, options.step_size
        self.overlap, self.queue_depth = overlap, max(1, int(queue_depth))
        # seconds of the last predict(): wall (tile rows, after the scan), scan, tissue (the mask's strided read),
        # prepare (input thread busy), network (forward passes incl. TTA; on CUDA without synchronising), main
        # (calling thread busy), write (writer thread busy)
        self.timings: dict[str, float] = {}
        self.tile_count: TileCount | None = None     # tiles of the last predict() and how many ran
        self.cm, self.pm, self.lm = self.model.configuration_manager, self.model.plans_manager, self.model.label_manager
        self.nets = self.model.networks
        self.patch = tuple(int(p) for p in self.cm.patch_size)
        self._check_supported(model_folder)
        # the model-space grid: the configuration's spacing, finer by tta_scale (tile grid, padding, halo
        # and both resamplings all derive from it)
        self.spacing = [float(s) / check_scale(options.tta_scale) for s in self.cm.spacing]
        self.tta = TileTTA(self.patch, self.cm.spacing, self.model.mirror_axes if options.tta else None,
                           options.tta_rotations, options.tta_permutations, str(model_folder))
        self.gaussian = self._gaussian()

    def _check_supported(self, folder: Path) -> None:
        problems = []
        if len(self.patch) != 3:
            problems.append("a 2D configuration")
        if list(self.pm.transpose_forward)[0] != 0:      # planes are read along the input's z
            problems.append(f"transpose_forward {self.pm.transpose_forward} (z must stay first)")
        for fn in ("resampling_fn_data", "resampling_fn_probabilities"):
            if self.cm.configuration[fn] != "resample_data_or_seg_to_shape":
                problems.append(f"{fn} {self.cm.configuration[fn]}")
        schemes = self.cm.normalization_schemes
        if len(schemes) != 1 or schemes[0] not in compat.SUPPORTED_NORMALIZATION:
            problems.append(f"normalization {schemes}")
        if any(self.cm.use_mask_for_norm):
            problems.append("use_mask_for_norm")
        if self.cm.previous_stage_name is not None:
            problems.append("a cascade stage")
        if problems:
            raise UserError(f"{folder}: streaming prediction does not support {', '.join(problems)}")

    def _gaussian(self) -> torch.Tensor:
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian
        return compute_gaussian(self.patch, sigma_scale=1. / 8, value_scaling_factor=10,
                                device=self.device).float()

    # ---- network ---------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_tile(self, tile: torch.Tensor) -> torch.Tensor:
        """Fold-averaged logits (C, *patch) of one tile (1, 1, *patch), each fold mirror-averaged by
        nnU-Net's TTA (:meth:`LoadedModel.mirrored`) and, with rotations or permutations, averaged over
        those by :class:`~nnunet_vasculature.inference.tta.TileTTA`."""
        autocast = torch.autocast(self.device.type) if self.device.type == "cuda" else contextlib.nullcontext()
        with autocast:
            total = None
            for net in self.nets:
                logits = self.tta(self.model.mirrored(net), tile)
                total = logits if total is None else total + logits
        return (total / len(self.nets))[0].float()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Foreground probability (y, x) of logits (C, y, x): the label manager's inference nonlinearity."""
        return self.lm.apply_inference_nonlin(torch.from_numpy(logits))[1].numpy()

    def background_logits(self) -> torch.Tensor:
        """Logits (C,) whose foreground probability is 0 under the label manager's nonlinearity (softmax or
        sigmoid): the first channel ``+BACKGROUND_LOGIT``, the others ``-BACKGROUND_LOGIT``; given to the voxels
        no tile covers when tiles are skipped (finite, so the probability resampling can interpolate them)."""
        logits = torch.full((self.lm.num_segmentation_heads,), -BACKGROUND_LOGIT, dtype=torch.float32,
                            device=self.device)
        logits[0] = BACKGROUND_LOGIT
        return logits

    # ---- the stream ------------------------------------------------------------------------
    @staticmethod
    def scan(src: VolumeSource) -> Scan:
        """Bounding box of the non-zero voxels and intensity statistics of the whole volume (one pass
        over it): what every part of a prediction needs. Plain ints and floats, so it can be computed
        once and handed to :meth:`predict` of other processes (``scan=``)."""
        return compat.nonzero_bbox_and_stats(src.read, src.shape)

    def geometry(self, src: VolumeSource, crop_box: compat.BBox) -> StreamingGeometry:
        """The crop, resampling, padding and tiles of ``src`` with the non-zero box ``crop_box``."""
        return StreamingGeometry.plan(src.shape, src.spacing, crop_box, self.pm.transpose_forward,
                                      self.pm.transpose_backward, self.spacing, self.patch, self.step,
                                      self.cm.configuration["resampling_fn_data_kwargs"],
                                      self.cm.configuration["resampling_fn_probabilities_kwargs"], src.name)

    def tissue_mask(self, src: VolumeSource) -> TissueMask:
        """The tissue mask of ``src`` (:meth:`TissueMask.measure <nnunet_vasculature.inference.tissue.TissueMask.
        measure>`, cells of a quarter patch): a strided read, deterministic, so every process that computes it
        for the same input and model gets the same mask.

        Args:
            src: the input volume.

        Returns:
            The mask.
        """
        return TissueMask.measure(src, cell_stride(self.patch, self.spacing, src.spacing, self.pm.transpose_forward))

    def predict(self, src: VolumeSource, sink: Sink, start: int = 0, progress: Progress | None = None,
                end: int | None = None, scan: Scan | None = None, tissue: TissueMask | None = None) -> None:
        """Stream foreground probabilities of ``src`` to ``sink`` for original planes [start, end)
        (``end`` None: to the last plane), in z order.

        The planes are bitwise those of a whole-volume run: the same tiles are accumulated in the same
        order; the tile rows before the first one touching ``start`` and after the last one that
        plane ``end - 1`` needs are skipped. ``scan``: the result of :meth:`scan` (computed if None).
        With the options' ``tissue_mask``, the tiles wholly outside the dilated tissue mask (``tissue``, else
        :meth:`tissue_mask`) are not run and the voxels no tile covers are background; :attr:`tile_count`
        says how many tiles of the volume run."""
        depth, height, width = src.shape
        end = depth if end is None else max(start, min(int(end), depth))
        if start >= end:
            return
        started = time.perf_counter()
        crop_box, stats = self.scan(src) if scan is None else scan
        self.timings = {"scan": time.perf_counter() - started}
        self.tile_count = None

        def background(first: int, stop: int) -> None:
            for z in range(first, stop):
                sink(z, np.zeros((1, height, width), np.float32))

        if crop_box is None:                 # nothing but zeros: stock nnU-Net predicts background
            self.tile_count = TileCount(0, 0)
            background(start, end)
            return
        geometry = self.geometry(src, crop_box)
        run = None
        if self.options.tissue_mask:
            started = time.perf_counter()
            tissue = self.tissue_mask(src) if tissue is None else tissue
            run = tiles_to_run(geometry, tissue)
            self.timings["tissue"] = time.perf_counter() - started
            self.tile_count = TileCount(int(run.size), int(run.sum()), tissue.fraction)
        else:
            self.tile_count = count_tiles(geometry, None)
        (crop_z0, crop_z1), (crop_y0, crop_y1), (crop_x0, crop_x1) = geometry.crop_box
        intensity = self.pm.plans.get("foreground_intensity_properties_per_channel", {}).get("0")
        normalize = compat.make_normalizer(self.cm.normalization_schemes[0], intensity, stats)

        def read_crop(a: int, b: int) -> np.ndarray:
            return geometry.to_model_axes(src.read(crop_z0 + a, crop_z0 + b)[:, crop_y0:crop_y1, crop_x0:crop_x1])

        first_crop_plane, end_crop_plane = geometry.crop_planes(start, end)
        background(start, min(crop_z0, end))          # original planes outside the crop box are background
        if first_crop_plane < end_crop_plane:
            rows, last_padded_plane = geometry.tile_rows(first_crop_plane, end_crop_plane)
            inputs = ModelInput(geometry, read_crop, normalize, compat.normalized_range(normalize, stats),
                                pin=self.device.type == "cuda")
            back = BackResampler(geometry, self.probabilities, sink, first_crop_plane, end_crop_plane)
            self._run_rows(geometry, rows, last_padded_plane, inputs, back, progress, run)
        background(max(start, crop_z1), end)

    def _run_rows(self, geometry: StreamingGeometry, rows: list[int], last_padded_plane: int, inputs: ModelInput,
                  back: BackResampler, progress: Progress | None, run: np.ndarray | None = None) -> None:
        """Predict the tile rows ``rows`` and hand on the finished model planes up to ``last_padded_plane``.

        The network runs here; the rows' input windows come from a :class:`Prefetch` thread and the
        finished planes go to a :class:`Writer` thread (both in this thread without ``overlap``). ``run``: which
        tiles run (:func:`~nnunet_vasculature.inference.tissue.tiles_to_run`; None: all); a row none of whose
        tiles runs has no input window prepared, and the voxels no tile covers get :meth:`background_logits`."""
        patch_depth, patch_height, patch_width = self.patch
        classes = self.lm.num_segmentation_heads
        padded = geometry.padded_shape
        accumulator = torch.zeros((classes, patch_depth, padded[1], padded[2]), dtype=torch.float32,
                                  device=self.device)
        weight_sum = torch.zeros((patch_depth, padded[1], padded[2]), dtype=torch.float32, device=self.device)
        row_start = rows[0]
        started, network_seconds = time.perf_counter(), 0.0
        row_index = {s: i for i, s in enumerate(geometry.tile_starts[0])}
        row_runs = {s: run is None or bool(run[row_index[s]].any()) for s in rows}
        background = None if run is None or run.all() else self.background_logits()
        windows = writer = None
        try:
            writer = Writer(back.write, self.queue_depth, self.overlap, "streaming-writer")
            windows = Prefetch(lambda: (inputs.window(s) if row_runs[s] else None for s in rows), self.queue_depth,
                               self.overlap, "streaming-input")
            for next_row, window in zip(rows, windows):
                if next_row > row_start:
                    writer.put(_finished_planes(accumulator, weight_sum, row_start, next_row, geometry, background))
                    _shift_planes(accumulator, weight_sum, next_row - row_start)
                    row_start = next_row
                if window is None:                              # no tile of this row runs
                    continue
                x = window.to(self.device, non_blocking=True)   # pinned on CUDA: the copy overlaps the host work
                for index_y, tile_y in enumerate(geometry.tile_starts[1]):
                    for index_x, tile_x in enumerate(geometry.tile_starts[2]):
                        if run is not None and not run[row_index[next_row], index_y, index_x]:
                            continue
                        tile = x[None, None, :, tile_y:tile_y + patch_height, tile_x:tile_x + patch_width]
                        t = time.perf_counter()
                        logits = self.predict_tile(tile)
                        network_seconds += time.perf_counter() - t
                        accumulator[:, :, tile_y:tile_y + patch_height, tile_x:tile_x + patch_width] += \
                            logits * self.gaussian
                        weight_sum[:, tile_y:tile_y + patch_height, tile_x:tile_x + patch_width] += self.gaussian
                        if progress is not None:
                            progress(1)
            writer.put(_finished_planes(accumulator, weight_sum, row_start,
                                        min(row_start + patch_depth, last_padded_plane + 1), geometry, background))
            writer.put(None)
            writer.finish()
        finally:
            try:
                if windows is not None:
                    windows.close()
            finally:                  # also when a second Ctrl-C interrupts the first join
                if writer is not None:
                    writer.close()
            if windows is not None and writer is not None:
                wall = time.perf_counter() - started
                waited = windows.waited + writer.waited if self.overlap else windows.busy + writer.busy
                self.timings.update(wall=wall, prepare=windows.busy, network=network_seconds, main=wall - waited,
                                    write=writer.busy)


def _finished_planes(accumulator: torch.Tensor, weight_sum: torch.Tensor, first: int, stop: int,
                     geometry: StreamingGeometry, background: torch.Tensor | None = None
                     ) -> list[tuple[int, np.ndarray]]:
    """Padded planes [first, stop) are complete: (model plane, logits (C, y, x)) of each, divided one plane
    at a time (dividing the whole block at once would allocate a second accumulator-sized buffer on the
    device). The accumulator's plane 0 is padded plane ``first``. ``background`` (C,): the logits of the
    voxels no tile covered (tiles skipped), None when every tile ran."""
    pad, model_shape = geometry.pad_before, geometry.model_shape
    ys, xs = slice(pad[1], pad[1] + model_shape[1]), slice(pad[2], pad[2] + model_shape[2])

    def divided(i: int) -> torch.Tensor:
        logits = accumulator[:, i, ys, xs] / weight_sum[i, ys, xs]
        if background is not None:
            logits = torch.where(weight_sum[i, ys, xs] > 0, logits, background[:, None, None])
        return logits
    return [(first + i - pad[0], divided(i).cpu().numpy())
            for i in range(stop - first) if 0 <= first + i - pad[0] < model_shape[0]]


class ModelInput:
    """Padded model-space input windows of tile rows, each plane prepared once.

    Model planes are prepared in the blocks (``blocks``) a whole-volume run prepares them (each row's
    new planes), also when a run starts at a later row: resampling along z depends (by float rounding) on
    a block's extent. They are kept until no later row needs them. The input planes a block is
    interpolated from (its own plus a halo on each side) are read, cropped, normalised and resized
    in-plane once each (float64, as the resampling computes them) and the halo is kept for the next
    block: between blocks at most 2 x (``compat.HALO`` + 1) such planes are held."""

    def __init__(self, geometry: StreamingGeometry, read_crop: PlaneReader, normalize: Normalizer,
                 value_range: tuple[float, float], pin: bool = False):
        self.geometry, self.read_crop, self.normalize = geometry, read_crop, normalize
        self.value_range, self.pin = value_range, pin
        model_depth, patch_depth, pad = geometry.model_shape[0], geometry.patch[0], geometry.pad_before
        ends = [min(model_depth, max(0, s + patch_depth - pad[0])) for s in geometry.tile_starts[0]]
        self.blocks = [(a, b) for a, b in zip([0] + ends[:-1], ends) if a < b]
        self.model_planes: dict[int, np.ndarray] = {}     # model plane -> float32 (y, x)
        self.resized: dict[int, np.ndarray] = {}          # input plane -> normalised, resized in-plane, float64

    def window(self, row: int) -> torch.Tensor:
        """Padded model-space input planes [row, row + patch depth) (padded coordinates), zeros in the
        padding; a pinned tensor when ``pin``."""
        g = self.geometry
        pad, model_shape, patch_depth = g.pad_before, g.model_shape, g.patch[0]
        out = torch.zeros((patch_depth, g.padded_shape[1], g.padded_shape[2]), dtype=torch.float32,
                          pin_memory=self.pin)
        view = out.numpy()
        first, stop = max(0, row - pad[0]), min(model_shape[0], row + patch_depth - pad[0])
        missing = [m for m in range(first, stop) if m not in self.model_planes]
        for block_start, block_stop in self.blocks:
            if missing and block_start <= missing[-1] and block_stop > missing[0]:
                new = self._block(block_start, block_stop)
                self.model_planes.update({m: new[m - block_start] for m in range(max(block_start, first), block_stop)
                                          if m not in self.model_planes})
        for m in [m for m in self.model_planes if m < first]:
            del self.model_planes[m]
        for m in range(first, stop):
            view[m + pad[0] - row, pad[1]:pad[1] + model_shape[1], pad[2]:pad[2] + model_shape[2]] = \
                self.model_planes[m]
        return out

    def _block(self, first: int, stop: int) -> np.ndarray:
        """Model planes [first, stop) (float32)."""
        g = self.geometry
        if not g.resampled:
            return self.normalize(self.read_crop(first, stop))
        crop_depth, z_order = g.crop_shape[0], g.data_resampling.z_order
        input_first, input_stop = compat.input_range(first, stop, crop_depth, g.model_shape[0], z_order)
        x = compat.resample_along_z(self._resized(input_first, input_stop), input_first, crop_depth,
                                    range(first, stop), g.model_shape[0], g.data_resampling, self.value_range)
        keep = compat.input_range(stop, stop + 1, crop_depth, g.model_shape[0], z_order)[0]   # next block's first
        for i in [i for i in self.resized if i < keep]:
            del self.resized[i]
        return x.astype(np.float32)

    def _resized(self, first: int, stop: int) -> np.ndarray:
        """Input planes [first, stop) normalised and resized in-plane; those not kept are computed, in runs."""
        i = first
        while i < stop:
            j = i
            while j < stop and j not in self.resized:
                j += 1
            if j > i:
                new = compat.resample_inplane(self.normalize(self.read_crop(i, j)), self.geometry.model_shape[1:],
                                              self.geometry.data_resampling)
                self.resized.update(zip(range(i, j), new))
            i = j + 1
        return np.stack([self.resized[i] for i in range(first, stop)])


def _shift_planes(accumulator: torch.Tensor, weight_sum: torch.Tensor, k: int) -> None:
    """Move the accumulators' planes k down in place and zero the k freed planes at the end.

    Plane by plane (each copy reads a plane that is not written later), so no full-size copy of the
    accumulator is made: ``torch.roll`` would allocate a second (C, patch z, H, W) buffer every row."""
    depth = weight_sum.shape[0]
    for i in range(depth - k):
        accumulator[:, i].copy_(accumulator[:, i + k])
        weight_sum[i].copy_(weight_sum[i + k])
    accumulator[:, depth - k:] = 0
    weight_sum[depth - k:] = 0


class BackResampler:
    """Model-space logit planes -> original planes: resample (like resampling_fn_probabilities), apply
    the inference nonlinearity (``probabilities``), undo crop and transpose, hand to the sink. Emits crop
    planes [first_crop_plane, end_crop_plane)."""

    def __init__(self, geometry: StreamingGeometry, probabilities: Nonlinearity, sink: Sink, first_crop_plane: int,
                 end_crop_plane: int):
        self.geometry, self.probabilities, self.sink = geometry, probabilities, sink
        self.planes: dict[int, np.ndarray] = {}          # model plane -> logits resized in-plane (C, y, x)
        self.next_crop_plane = max(0, first_crop_plane)
        self.end_crop_plane = min(end_crop_plane, geometry.crop_shape[0])

    def add(self, model_plane: int, logits: np.ndarray) -> None:
        g = self.geometry
        if g.resampled:
            order, clip = g.probability_resampling.order, g.probability_resampling.separate_z
            logits = np.stack([compat.inplane(c[None].astype(np.float64), g.crop_shape[1:], order, clip=clip)[0]
                               for c in logits]).astype(np.float32)
        self.planes[model_plane] = logits
        self._emit(last_available=model_plane)

    def flush(self) -> None:
        self._emit(last_available=self.geometry.model_shape[0] - 1)

    def write(self, block: list[tuple[int, np.ndarray]] | None) -> None:
        """Add a block of finished model planes (from the row loop); None: flush."""
        if block is None:
            self.flush()
            return
        for model_plane, logits in block:
            self.add(model_plane, logits)

    def _emit(self, last_available: int) -> None:
        g = self.geometry
        while self.next_crop_plane < self.end_crop_plane:
            crop_plane = self.next_crop_plane
            if g.last_model_plane(crop_plane) > last_available:
                return
            if not g.resampled:
                plane = self.planes[crop_plane]
            else:
                first, stop = g.model_planes_of_crop_plane(crop_plane)
                have = sorted(m for m in self.planes if first <= m < stop)
                stack = np.stack([self.planes[m] for m in have], axis=1)       # (C, n, y, x)
                plane = np.stack([compat.along_z(c, have[0], g.model_shape[0], np.array([crop_plane]),
                                                 g.crop_shape[0], g.probability_resampling.z_order)[0]
                                  for c in stack])
            self._write(crop_plane, plane)
            for m in [m for m in self.planes if m < g.first_model_plane(crop_plane + 1)]:
                del self.planes[m]
            self.next_crop_plane += 1

    def _write(self, crop_plane: int, logits: np.ndarray) -> None:
        g = self.geometry
        probabilities = g.to_input_axes(self.probabilities(logits))
        (crop_z0, _), (crop_y0, crop_y1), (crop_x0, crop_x1) = g.crop_box
        full = np.zeros(g.input_shape[1:], np.float32)
        full[crop_y0:crop_y1, crop_x0:crop_x1] = probabilities
        self.sink(crop_z0 + crop_plane, full[None])
