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
import copy
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference import nnunet_compat as nc
from nnunet_vasculature.inference.pipeline import Prefetch, Writer
from nnunet_vasculature.inference.tta import TileTTA, check_scale
from nnunet_vasculature.io.sources import VolumeSource

Sink = Callable[[int, np.ndarray], None]      # (first original z, probabilities (n, y, x) float32)
Progress = Callable[[int], object]            # called with the number of tiles just predicted
PlaneReader = Callable[[int, int], np.ndarray]   # planes [a, b) -> (b - a, y, x)
Normalizer = Callable[[np.ndarray], np.ndarray]
Scan = tuple  # (bbox [(z0, z1), (y0, y1), (x0, x1)] or None, intensity statistics dict or None)


def check_model_folder(folder: Path, folds: Sequence[int | str], checkpoint: str) -> None:
    """A one-line UserError unless ``folder`` holds plans.json and every ``fold_F/checkpoint``."""
    if not (folder / "plans.json").is_file():
        raise UserError(f"{folder}: not an nnU-Net model folder (no plans.json)")
    for f in folds:
        if not (folder / f"fold_{f}" / checkpoint).is_file():
            raise UserError(f"{folder}: no fold_{f}/{checkpoint}")


class StreamingPredictor:
    def __init__(self, model_folder: Path, folds: Sequence[int | str], checkpoint_name: str = "checkpoint_final.pth",
                 device: torch.device = torch.device("cpu"), use_mirroring: bool = True,
                 tile_step_size: float = 0.5, overlap: bool = True, queue_depth: int = 1,
                 tta_rotations: bool = False, tta_permutations: bool = False, tta_scale: float = 1.0):
        """``overlap``: prepare input and write planes in background threads (False: everything in the
        calling thread, in order; same planes). ``queue_depth``: rows of input prepared ahead, blocks of
        finished planes waiting to be written. ``tta_rotations``, ``tta_permutations``: 90° in-plane
        rotations / axis permutations of each tile on top of mirroring; ``tta_scale``: predict at the
        configuration's spacing divided by this factor (:mod:`nnunet_vasculature.inference.tta`)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        model_folder = Path(model_folder)
        check_model_folder(model_folder, folds, checkpoint_name)
        folds = [f if f == "all" else int(f) for f in folds]
        pred = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                               perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint_name)
        self.device, self.step = device, tile_step_size
        self.overlap, self.queue_depth = overlap, max(1, int(queue_depth))
        # seconds of the last predict(): wall (tile rows, after the scan), scan, prepare (input thread busy),
        # network (forward passes incl. TTA; on CUDA without synchronising), main (calling thread busy),
        # write (writer thread busy)
        self.timings: dict[str, float] = {}
        self.cm, self.pm, self.lm = pred.configuration_manager, pred.plans_manager, pred.label_manager
        # with nnUNet_compile=1 stock nnU-Net hands over a compiled module: copy and load the module
        # underneath (plain keys), and compile each copy the same way
        plain = getattr(pred.network, "_orig_mod", pred.network)
        self.nets = []
        for params in pred.list_of_parameters:
            net = copy.deepcopy(plain)
            net.load_state_dict(params)
            net = net.to(device).eval()
            self.nets.append(torch.compile(net) if plain is not pred.network else net)
        # nnU-Net's mirroring TTA (_internal_maybe_mirror_and_predict) runs each fold's network: the stock
        # predictor is kept and its `network` set per fold (predict_tile); the fold networks hold the
        # weights, so the predictor's copies of them are dropped
        pred.list_of_parameters = []
        pred.network = self.nets[0]
        self._stock = pred
        self.patch = tuple(int(p) for p in self.cm.patch_size)
        self._check_supported(model_folder)
        # the model-space grid: the configuration's spacing, finer by tta_scale (tile grid, padding, halo
        # and both resamplings all derive from it)
        self.spacing = [float(s) / check_scale(tta_scale) for s in self.cm.spacing]
        self.tta = TileTTA(self.patch, self.cm.spacing, pred.allowed_mirroring_axes if use_mirroring else None,
                           tta_rotations, tta_permutations, str(model_folder))
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
        if len(schemes) != 1 or schemes[0] not in nc.SUPPORTED_NORMALIZATION:
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
        nnU-Net's ``nnUNetPredictor._internal_maybe_mirror_and_predict`` (and, with rotations or
        permutations, averaged over those by :class:`~nnunet_vasculature.inference.tta.TileTTA`)."""
        ctx = torch.autocast(self.device.type) if self.device.type == "cuda" else contextlib.nullcontext()
        with ctx:
            total = None
            for net in self.nets:
                self._stock.network = net
                pred = self.tta(self._stock._internal_maybe_mirror_and_predict, tile)
                total = pred if total is None else total + pred
        return (total / len(self.nets))[0].float()

    # ---- transposes (z stays first) -------------------------------------------------------
    def _plane_t(self, planes: np.ndarray) -> np.ndarray:
        """Apply transpose_forward to (n, y, x) planes."""
        return planes.transpose(self.pm.transpose_forward)

    def _plane_back(self, plane: np.ndarray) -> np.ndarray:
        """Apply transpose_backward to one model-axes (y, x) plane."""
        return plane.transpose([t - 1 for t in self.pm.transpose_backward[1:]])

    # ---- the stream ------------------------------------------------------------------------
    @staticmethod
    def scan(src: VolumeSource) -> Scan:
        """Bounding box of the non-zero voxels and intensity statistics of the whole volume (one pass
        over it): what every part of a prediction needs. Plain ints and floats, so it can be computed
        once and handed to :meth:`predict` of other processes (``scan=``)."""
        return nc.nonzero_bbox_and_stats(src.read, src.shape)

    def predict(self, src: VolumeSource, sink: Sink, start: int = 0, progress: Progress | None = None,
                end: int | None = None, scan: Scan | None = None) -> None:
        """Stream foreground probabilities of ``src`` to ``sink`` for original planes [start, end)
        (``end`` None: to the last plane), in z order.

        The planes are bitwise those of a whole-volume run: the same tiles are accumulated in the same
        order; the tile rows before the first one touching ``start`` and after the last one that
        plane ``end - 1`` needs are skipped. ``scan``: the result of :meth:`scan` (computed if None)."""
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
        Z, Y, X = src.shape
        end = Z if end is None else max(start, min(int(end), Z))
        if start >= end:
            return
        t0 = time.perf_counter()
        bbox, stats = self.scan(src) if scan is None else scan
        self.timings = {"scan": time.perf_counter() - t0}
        if bbox is None:                     # nothing but zeros: stock nnU-Net predicts background
            for z in range(start, end):
                sink(z, np.zeros((1, Y, X), np.float32))
            return
        (bz0, bz1), (by0, by1), (bx0, bx1) = bbox
        props = self.pm.plans.get("foreground_intensity_properties_per_channel", {}).get("0")
        norm = nc.make_normalizer(self.cm.normalization_schemes[0], props, stats)
        tf = list(self.pm.transpose_forward)
        sp = [src.spacing[i] for i in tf]
        target = list(self.spacing)
        crop_shape = tuple(int(n) for n in np.array([bz1 - bz0, by1 - by0, bx1 - bx0])[tf])
        mshape = tuple(int(s) for s in compute_new_shape(crop_shape, sp, target))
        rs_d = nc.Resampling.from_kwargs(self.cm.configuration["resampling_fn_data_kwargs"], sp, target)
        rs_p = nc.Resampling.from_kwargs(self.cm.configuration["resampling_fn_probabilities_kwargs"], target, sp)
        if (rs_d.separate_z and rs_d.axis != 0) or (rs_p.separate_z and rs_p.axis != 0):
            raise UserError(f"{src.name}: anisotropic resampling along a non-z axis is not supported")
        value_range = nc.normalized_range(norm, stats)

        def read_crop(a: int, b: int) -> np.ndarray:
            return self._plane_t(src.read(bz0 + a, bz0 + b)[:, by0:by1, bx0:bx1])

        padded, pad = nc.pad_to_patch(mshape, self.patch)
        steps = compute_steps_for_sliding_window(padded, self.patch, self.step)
        pz = self.patch[0]
        first_out, end_out = max(0, start - bz0), min(end, bz1) - bz0      # crop planes [first_out, end_out)
        back = _BackResampler(self, crop_shape, mshape, rs_p, bbox, (Y, X), sink, first_out, end_out)
        # original planes outside the bounding box are background
        for z in range(start, min(bz0, end)):
            sink(z, np.zeros((1, Y, X), np.float32))
        if first_out < end_out:
            need = back.first_model_plane(first_out)
            last = back.last_model_plane(end_out - 1) + pad[0]      # padded; later rows do not touch it
            groups = [s for s in steps[0] if s + pz > need + pad[0] and s <= last]
            inputs = _ModelInput(read_crop, norm, crop_shape, mshape, rs_d, value_range, steps[0], self.patch[0],
                                 padded, pad, pin=self.device.type == "cuda")
            self._run_groups(groups, steps, padded, pad, mshape, inputs, back, progress, last)
        for z in range(max(start, bz1), end):
            sink(z, np.zeros((1, Y, X), np.float32))

    def _run_groups(self, groups: list[int], steps: list[list[int]], padded: list[int], pad: list[int],
                    mshape: tuple[int, ...], inputs: _ModelInput, back: _BackResampler,
                    progress: Progress | None, last: int) -> None:
        """Predict the tile rows ``groups`` and hand on the finished model planes up to ``last`` (padded).

        The network runs here; the rows' input windows come from a :class:`Prefetch` thread and the
        finished planes go to a :class:`Writer` thread (both in this thread without ``overlap``)."""
        pz, py, px = self.patch
        dev = self.device
        C = self.lm.num_segmentation_heads
        acc = torch.zeros((C, pz, padded[1], padded[2]), dtype=torch.float32, device=dev)
        wsum = torch.zeros((pz, padded[1], padded[2]), dtype=torch.float32, device=dev)
        lo = groups[0]
        t0, net = time.perf_counter(), 0.0
        windows = writer = None
        try:
            writer = Writer(back.write, self.queue_depth, self.overlap, "streaming-writer")
            windows = Prefetch(lambda: (inputs.window(s) for s in groups), self.queue_depth, self.overlap,
                               "streaming-input")
            for s, window in zip(groups, windows):
                if s > lo:
                    writer.put(self._finish(acc, wsum, lo, s, pad, mshape))
                    _shift_planes(acc, wsum, s - lo)
                    lo = s
                x = window.to(dev, non_blocking=True)     # pinned on CUDA: the copy overlaps the host work
                for ty in steps[1]:
                    for tx in steps[2]:
                        tile = x[None, None, :, ty:ty + py, tx:tx + px]
                        t = time.perf_counter()
                        logits = self.predict_tile(tile)
                        net += time.perf_counter() - t
                        acc[:, :, ty:ty + py, tx:tx + px] += logits * self.gaussian
                        wsum[:, ty:ty + py, tx:tx + px] += self.gaussian
                        if progress is not None:
                            progress(1)
            writer.put(self._finish(acc, wsum, lo, min(lo + pz, last + 1), pad, mshape))
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
                wall = time.perf_counter() - t0
                waited = windows.waited + writer.waited if self.overlap else windows.busy + writer.busy
                self.timings.update(wall=wall, prepare=windows.busy, network=net, main=wall - waited,
                                    write=writer.busy)

    @staticmethod
    def _finish(acc: torch.Tensor, wsum: torch.Tensor, lo: int, hi: int, pad: list[int],
                mshape: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
        """Planes [lo, hi) (padded coordinates) are complete: (model plane, logits (C, y, x)) of each,
        divided one plane at a time (dividing the whole block at once would allocate a second
        accumulator-sized buffer on the device)."""
        ys, xs = slice(pad[1], pad[1] + mshape[1]), slice(pad[2], pad[2] + mshape[2])
        return [(lo + i - pad[0], (acc[:, i, ys, xs] / wsum[i, ys, xs]).cpu().numpy())
                for i in range(hi - lo) if 0 <= lo + i - pad[0] < mshape[0]]


class _ModelInput:
    """Padded model-space input windows of tile rows, each plane prepared once.

    Model planes are prepared in the blocks (``chunks``) a whole-volume run prepares them (each row's
    new planes), also when a run starts at a later row: resampling along z depends (by float rounding) on
    a block's extent. They are kept until no later row needs them. The input planes a block is
    interpolated from (its own plus a halo on each side) are read, cropped, normalised and resized
    in-plane once each (float64, as the resampling computes them) and the halo is kept for the next
    block: between blocks at most 2 x (``nc.HALO`` + 1) such planes are held."""

    def __init__(self, read_crop: PlaneReader, norm: Normalizer, crop_shape: tuple[int, ...],
                 mshape: tuple[int, ...], rs: nc.Resampling, value_range: tuple[float, float], starts: list[int],
                 pz: int, padded: list[int], pad: list[int], pin: bool = False):
        self.read_crop, self.norm, self.crop_shape, self.mshape = read_crop, norm, crop_shape, mshape
        self.rs, self.value_range, self.pz, self.padded, self.pad, self.pin = rs, value_range, pz, padded, pad, pin
        self.same = tuple(crop_shape) == tuple(mshape)
        ends = [min(mshape[0], max(0, s + pz - pad[0])) for s in starts]
        self.chunks = [(a, b) for a, b in zip([0] + ends[:-1], ends) if a < b]
        self.model: dict[int, np.ndarray] = {}       # model plane -> float32 (y, x)
        self.resized: dict[int, np.ndarray] = {}     # input plane -> normalised, resized in-plane, float64

    def window(self, s: int) -> torch.Tensor:
        """Padded model-space input planes [s, s + pz) (padded coordinates), zeros in the padding; a
        pinned tensor when ``pin``."""
        pad, mshape = self.pad, self.mshape
        out = torch.zeros((self.pz, self.padded[1], self.padded[2]), dtype=torch.float32, pin_memory=self.pin)
        view = out.numpy()
        a, b = max(0, s - pad[0]), min(mshape[0], s + self.pz - pad[0])
        missing = [m for m in range(a, b) if m not in self.model]
        for ca, cb in self.chunks:
            if missing and ca <= missing[-1] and cb > missing[0]:
                new = self._block(ca, cb)
                self.model.update({m: new[m - ca] for m in range(max(ca, a), cb) if m not in self.model})
        for m in [m for m in self.model if m < a]:
            del self.model[m]
        for m in range(a, b):
            view[m + pad[0] - s, pad[1]:pad[1] + mshape[1], pad[2]:pad[2] + mshape[2]] = self.model[m]
        return out

    def _block(self, a: int, b: int) -> np.ndarray:
        """Model planes [a, b) (float32)."""
        if self.same:
            return self.norm(self.read_crop(a, b))
        n_in, z_order = self.crop_shape[0], self.rs.z_order
        i0, i1 = nc.input_range(a, b, n_in, self.mshape[0], z_order)
        x = nc.resample_along_z(self._resized(i0, i1), i0, n_in, range(a, b), self.mshape[0], self.rs,
                                self.value_range)
        keep = nc.input_range(b, b + 1, n_in, self.mshape[0], z_order)[0]    # the next block's first input plane
        for i in [i for i in self.resized if i < keep]:
            del self.resized[i]
        return x.astype(np.float32)

    def _resized(self, i0: int, i1: int) -> np.ndarray:
        """Input planes [i0, i1) normalised and resized in-plane; those not kept are computed, in runs."""
        i = i0
        while i < i1:
            j = i
            while j < i1 and j not in self.resized:
                j += 1
            if j > i:
                new = nc.resample_inplane(self.norm(self.read_crop(i, j)), self.mshape[1:], self.rs)
                self.resized.update(zip(range(i, j), new))
            i = j + 1
        return np.stack([self.resized[i] for i in range(i0, i1)])


def _shift_planes(acc: torch.Tensor, wsum: torch.Tensor, k: int) -> None:
    """Move the accumulators' planes k down in place and zero the k freed planes at the end.

    Plane by plane (each copy reads a plane that is not written later), so no full-size copy of the
    accumulator is made: ``torch.roll`` would allocate a second (C, patch z, H, W) buffer every row."""
    pz = wsum.shape[0]
    for i in range(pz - k):
        acc[:, i].copy_(acc[:, i + k])
        wsum[i].copy_(wsum[i + k])
    acc[:, pz - k:] = 0
    wsum[pz - k:] = 0


class _BackResampler:
    """Model-space logit planes -> original planes: resample (like resampling_fn_probabilities),
    apply the inference nonlinearity, undo crop and transpose, hand to the sink."""

    def __init__(self, pred: StreamingPredictor, crop_shape: tuple[int, ...], mshape: tuple[int, ...],
                 rs: nc.Resampling, bbox: nc.BBox, full_yx: tuple[int, int], sink: Sink, first_out: int,
                 end_out: int):
        self.pred, self.crop_shape, self.mshape, self.rs = pred, crop_shape, mshape, rs
        self.bbox, self.full_yx, self.sink = bbox, full_yx, sink
        self.planes: dict[int, np.ndarray] = {}
        self.next_out = max(0, first_out)
        self.end_out = min(end_out, crop_shape[0])     # output planes [first_out, end_out) are emitted
        self.same = tuple(crop_shape) == tuple(mshape)

    def _needed(self, o: int) -> tuple[int, int]:
        """Model planes [a, b) that output plane ``o`` is interpolated from."""
        if self.same:
            return o, o + 1
        return nc.input_range(o, o + 1, self.mshape[0], self.crop_shape[0], self.rs.z_order)

    def first_model_plane(self, o: int) -> int:
        return self._needed(o)[0]

    def last_model_plane(self, o: int) -> int:
        return min(self._needed(o)[1], self.mshape[0]) - 1

    def add(self, m: int, logits: np.ndarray) -> None:
        if not self.same:
            logits = np.stack([nc.inplane(c[None].astype(np.float64), self.crop_shape[1:], self.rs.order,
                                          clip=self.rs.separate_z)[0] for c in logits]).astype(np.float32)
        self.planes[m] = logits
        self._emit(last_available=m)

    def flush(self) -> None:
        self._emit(last_available=self.mshape[0] - 1)

    def write(self, block: list[tuple[int, np.ndarray]] | None) -> None:
        """Add a block of finished model planes from :meth:`StreamingPredictor._finish`; None: flush."""
        if block is None:
            self.flush()
            return
        for m, logits in block:
            self.add(m, logits)

    def _emit(self, last_available: int) -> None:
        while self.next_out < self.end_out:
            a, b = self._needed(self.next_out)
            if min(b, self.mshape[0]) - 1 > last_available:
                return
            o = self.next_out
            if self.same:
                plane = self.planes[o]
            else:
                idx = sorted(m for m in self.planes if a <= m < b)
                stack = np.stack([self.planes[m] for m in idx], axis=1)       # (C, n, y, x)
                plane = np.stack([nc.along_z(c, idx[0], self.mshape[0], np.array([o]), self.crop_shape[0],
                                             self.rs.z_order)[0] for c in stack])
            self._write(o, plane)
            for m in [m for m in self.planes if m < self._needed(o + 1)[0]]:
                del self.planes[m]
            self.next_out += 1

    def _write(self, o: int, logits: np.ndarray) -> None:
        probs = self.pred._plane_back(self.pred.lm.apply_inference_nonlin(torch.from_numpy(logits))[1].numpy())
        (bz0, _), (y0, y1), (x0, x1) = self.bbox
        full = np.zeros(self.full_yx, np.float32)
        full[y0:y1, x0:x1] = probs
        self.sink(bz0 + o, full[None])
