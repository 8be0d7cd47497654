"""nnU-Net sliding-window prediction streamed along z, with host memory independent of volume depth.

The tiles are exactly those stock nnU-Net places on the whole (cropped, resampled, padded) volume
(``compute_steps_for_sliding_window``) and are aggregated with the same Gaussian weights; they are
just visited in z order, and a model-space plane is finished (divided, resampled back, converted to a
probability and written) as soon as no later tile touches it. Memory: one row of tiles
(patch depth x padded height x width, per class) plus the resampling halo.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference import resample
from nnunet_vasculature.io.sources import VolumeSource

SUPPORTED_NORM = ("ZScoreNormalization", "CTNormalization", "NoNormalization")
Sink = Callable[[int, np.ndarray], None]      # (first original z, probabilities (n, y, x) float32)


class StreamingPredictor:
    def __init__(self, model_folder: Path, folds, checkpoint_name: str = "checkpoint_final.pth",
                 device: torch.device = torch.device("cpu"), use_mirroring: bool = True,
                 tile_step_size: float = 0.5):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        model_folder = Path(model_folder)
        if not (model_folder / "plans.json").is_file():
            raise UserError(f"{model_folder}: not an nnU-Net model folder (no plans.json)")
        folds = [f if f == "all" else int(f) for f in folds]
        for f in folds:
            if not (model_folder / f"fold_{f}" / checkpoint_name).is_file():
                raise UserError(f"{model_folder}: no fold_{f}/{checkpoint_name}")
        pred = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                               perform_everything_on_device=True, device=device, verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint_name)
        self.device, self.step = device, tile_step_size
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
        axes = pred.allowed_mirroring_axes if use_mirroring else None
        self.mirror_combos = [] if not axes else \
            [tuple(a + 2 for a in c) for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        self.patch = tuple(int(p) for p in self.cm.patch_size)
        self._check_supported(model_folder)
        self.gaussian = self._gaussian()

    def _check_supported(self, folder: Path) -> None:
        problems = []
        if len(self.patch) != 3:
            problems.append("a 2D configuration")
        if list(self.pm.transpose_forward)[0] != 0:
            problems.append(f"transpose_forward {self.pm.transpose_forward} (z must stay first)")
        for fn in ("resampling_fn_data", "resampling_fn_probabilities"):
            if self.cm.configuration[fn] != "resample_data_or_seg_to_shape":
                problems.append(f"{fn} {self.cm.configuration[fn]}")
        schemes = self.cm.normalization_schemes
        if len(schemes) != 1 or schemes[0] not in SUPPORTED_NORM:
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
        """Fold-averaged, mirror-averaged logits (C, *patch) of one tile (1, 1, *patch)."""
        ctx = torch.autocast(self.device.type) if self.device.type == "cuda" else contextlib.nullcontext()
        with ctx:
            total = None
            for net in self.nets:
                pred = net(tile)
                for axes in self.mirror_combos:
                    pred = pred + torch.flip(net(torch.flip(tile, axes)), axes)
                pred = pred / (len(self.mirror_combos) + 1)
                total = pred if total is None else total + pred
        return (total / len(self.nets))[0].float()

    # ---- preprocessing ---------------------------------------------------------------------
    def _plane_t(self, planes: np.ndarray) -> np.ndarray:
        """Apply transpose_forward to (n, y, x) planes (z stays first)."""
        t = self.pm.transpose_forward
        return planes if list(t[1:]) == [1, 2] else planes.transpose(0, 2, 1)

    def _stats(self, src: VolumeSource, block: int = 16):
        """Nonzero bounding box (stock crop_to_nonzero) and intensity statistics of the crop, in one
        pass: voxels outside the box are zero, so sums over the volume are sums over the crop, and the
        crop holds zeros exactly when it is larger than the number of non-zero voxels."""
        Z, Y, X = src.shape
        zs, ys, xs = np.zeros(Z, bool), np.zeros(Y, bool), np.zeros(X, bool)
        s = s2 = 0.0
        nnz, lo, hi = 0, np.inf, -np.inf
        for z0 in range(0, Z, block):
            b = src.read(z0, z0 + block)
            nz = b != 0
            zs[z0:z0 + len(b)] = nz.any(axis=(1, 2))
            ys |= nz.any(axis=(0, 2))
            xs |= nz.any(axis=(0, 1))
            v = b[nz].astype(np.float64)
            if v.size:
                s, s2, nnz = s + v.sum(), s2 + (v * v).sum(), nnz + v.size
                lo, hi = min(lo, v.min()), max(hi, v.max())
        if not zs.any():
            return None, None
        bbox = [(int(np.argmax(a)), int(len(a) - np.argmax(a[::-1]))) for a in (zs, ys, xs)]
        n = int(np.prod([b - a for a, b in bbox]))
        if n > nnz:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        mean = s / n
        return bbox, {"mean": mean, "std": float(np.sqrt(max(s2 / n - mean * mean, 0.0))), "min": lo, "max": hi}

    def _normalizer(self, stats: dict) -> Callable[[np.ndarray], np.ndarray]:
        scheme = self.cm.normalization_schemes[0]
        if scheme == "ZScoreNormalization":
            mean, std = stats["mean"], max(stats["std"], 1e-8)
            return lambda x: (x - mean) / std
        if scheme == "CTNormalization":
            p = self.pm.plans["foreground_intensity_properties_per_channel"]["0"]
            lo, hi, mean, std = p["percentile_00_5"], p["percentile_99_5"], p["mean"], max(p["std"], 1e-8)
            return lambda x: (np.clip(x, lo, hi) - mean) / std
        return lambda x: x

    # ---- the stream ------------------------------------------------------------------------
    def predict(self, src: VolumeSource, sink: Sink, start: int = 0, progress=None) -> None:
        """Stream foreground probabilities of ``src`` to ``sink`` for original planes ``start``..Z-1."""
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, determine_do_sep_z_and_axis
        Z, Y, X = src.shape
        bbox, stats = self._stats(src)
        if bbox is None:                     # nothing but zeros: stock nnU-Net predicts background
            for z in range(start, Z):
                sink(z, np.zeros((1, Y, X), np.float32))
            return
        (bz0, bz1), (by0, by1), (bx0, bx1) = bbox
        norm = self._normalizer(stats)
        tf = list(self.pm.transpose_forward)
        sp = [src.spacing[i] for i in tf]
        target = list(self.cm.spacing)
        crop = self._plane_t(np.zeros((1, by1 - by0, bx1 - bx0), np.uint8)).shape[1:]
        crop_shape = (bz1 - bz0, *crop)
        mshape = tuple(int(s) for s in compute_new_shape(crop_shape, sp, target))
        kw_d, kw_p = self.cm.configuration["resampling_fn_data_kwargs"], \
            self.cm.configuration["resampling_fn_probabilities_kwargs"]
        sep_d, axis_d = determine_do_sep_z_and_axis(kw_d.get("force_separate_z"), sp, target)
        sep_p, axis_p = determine_do_sep_z_and_axis(kw_p.get("force_separate_z"), target, sp)
        if (sep_d and axis_d != 0) or (sep_p and axis_p != 0):
            raise UserError(f"{src.name}: anisotropic resampling along a non-z axis is not supported")
        same = mshape == crop_shape
        order_d = kw_d.get("order_z", 0) if sep_d else kw_d.get("order", 3)
        order_p = kw_p.get("order_z", 0) if sep_p else kw_p.get("order", 1)
        lo_n, hi_n = norm(np.float64(stats["min"])), norm(np.float64(stats["max"]))

        def read_crop(a: int, b: int) -> np.ndarray:
            return self._plane_t(src.read(bz0 + a, bz0 + b)[:, by0:by1, bx0:bx1])

        def model_planes(a: int, b: int) -> np.ndarray:
            """Preprocessed model-space planes [a, b) (float32)."""
            if same:
                return norm(read_crop(a, b).astype(np.float32)).astype(np.float32)
            i0, i1 = resample.input_range(a, b, crop_shape[0], mshape[0], order_d)
            x = norm(read_crop(i0, i1).astype(np.float64))
            x = resample.inplane(x, mshape[1:], kw_d.get("order", 3), clip=sep_d)
            x = resample.along_z(x, i0, crop_shape[0], np.arange(a, b), mshape[0], order_d)
            if not sep_d and kw_d.get("order", 3) > 1:
                x = np.clip(x, lo_n, hi_n)     # skimage resize clips to the input's range
            return x.astype(np.float32)

        # padding to at least the patch, centred like pad_nd_image
        padded = [max(s, p) for s, p in zip(mshape, self.patch)]
        pad = [(p - s) // 2 for s, p in zip(mshape, padded)]
        steps = compute_steps_for_sliding_window(padded, self.patch, self.step)
        pz = self.patch[0]
        back = _BackResampler(self, crop_shape, mshape, order_p, kw_p.get("order", 1), sep_p, bbox,
                              (Y, X), sink, start - bz0)
        # original planes outside the bounding box are background
        for z in range(start, min(bz0, Z)):
            sink(z, np.zeros((1, Y, X), np.float32))
        first_out = max(0, start - bz0)
        if first_out < crop_shape[0]:
            need = back.first_model_plane(first_out)
            groups = [s for s in steps[0] if s + pz > need + pad[0]]
            self._run_groups(groups, steps, padded, pad, mshape, model_planes, back, progress)
        for z in range(max(start, bz1), Z):
            sink(z, np.zeros((1, Y, X), np.float32))

    def _run_groups(self, groups, steps, padded, pad, mshape, model_planes, back, progress) -> None:
        pz, py, px = self.patch
        dev = self.device
        C = self.lm.num_segmentation_heads
        acc = torch.zeros((C, pz, padded[1], padded[2]), dtype=torch.float32, device=dev)
        wsum = torch.zeros((pz, padded[1], padded[2]), dtype=torch.float32, device=dev)
        lo = groups[0]
        cache: dict[int, np.ndarray] = {}
        for s in groups:
            if s > lo:
                self._finish(acc, wsum, lo, s, pad, mshape, back)
                k = s - lo
                acc = torch.roll(acc, -k, dims=1)
                wsum = torch.roll(wsum, -k, dims=0)
                acc[:, pz - k:] = 0
                wsum[pz - k:] = 0
                lo = s
            window = self._input_window(s, pz, padded, pad, mshape, model_planes, cache)
            x = torch.from_numpy(window).to(dev)
            for ty in steps[1]:
                for tx in steps[2]:
                    tile = x[None, None, :, ty:ty + py, tx:tx + px]
                    acc[:, :, ty:ty + py, tx:tx + px] += self.predict_tile(tile) * self.gaussian
                    wsum[:, ty:ty + py, tx:tx + px] += self.gaussian
                    if progress is not None:
                        progress(1)
        self._finish(acc, wsum, lo, lo + pz, pad, mshape, back)
        back.flush()

    def _input_window(self, s, pz, padded, pad, mshape, model_planes, cache) -> np.ndarray:
        """Padded model-space input planes [s, s + pz), zeros in the padding."""
        out = np.zeros((pz, padded[1], padded[2]), np.float32)
        a, b = max(0, s - pad[0]), min(mshape[0], s + pz - pad[0])
        missing = [m for m in range(a, b) if m not in cache]
        if missing:
            new = model_planes(missing[0], missing[-1] + 1)
            cache.update({m: new[i] for i, m in enumerate(range(missing[0], missing[-1] + 1))})
        for m in [m for m in cache if m < a]:
            del cache[m]
        for m in range(a, b):
            out[m + pad[0] - s, pad[1]:pad[1] + mshape[1], pad[2]:pad[2] + mshape[2]] = cache[m]
        return out

    def _finish(self, acc, wsum, lo, hi, pad, mshape, back) -> None:
        """Planes [lo, hi) (padded coordinates) are complete: divide and hand them on."""
        n = hi - lo
        logits = (acc[:, :n] / wsum[:n]).cpu().numpy()
        for i in range(n):
            m = lo + i - pad[0]
            if 0 <= m < mshape[0]:
                back.add(m, logits[:, i, pad[1]:pad[1] + mshape[1], pad[2]:pad[2] + mshape[2]])


class _BackResampler:
    """Model-space logit planes -> original planes: resample (like resampling_fn_probabilities),
    apply the inference nonlinearity, undo crop and transpose, hand to the sink."""

    def __init__(self, pred: StreamingPredictor, crop_shape, mshape, order_z, order, sep, bbox, full_yx, sink,
                 first_out):
        self.pred, self.crop_shape, self.mshape = pred, crop_shape, mshape
        self.order_z, self.order, self.sep = order_z, order, sep
        self.bbox, self.full_yx, self.sink = bbox, full_yx, sink
        self.planes: dict[int, np.ndarray] = {}
        self.next_out = max(0, first_out)
        self.same = tuple(crop_shape) == tuple(mshape)

    def _needed(self, o: int) -> tuple[int, int]:
        """Model planes [a, b) that output plane ``o`` is interpolated from."""
        if self.same:
            return o, o + 1
        return resample.input_range(o, o + 1, self.mshape[0], self.crop_shape[0], self.order_z)

    def first_model_plane(self, o: int) -> int:
        return self._needed(o)[0]

    def add(self, m: int, logits: np.ndarray) -> None:
        if not self.same:
            logits = np.stack([resample.inplane(c[None].astype(np.float64), self.crop_shape[1:], self.order,
                                                clip=self.sep)[0] for c in logits]).astype(np.float32)
        self.planes[m] = logits
        self._emit(last_available=m)

    def flush(self) -> None:
        self._emit(last_available=self.mshape[0] - 1)

    def _emit(self, last_available: int) -> None:
        while self.next_out < self.crop_shape[0]:
            a, b = self._needed(self.next_out)
            if min(b, self.mshape[0]) - 1 > last_available:
                return
            o = self.next_out
            if self.same:
                plane = self.planes[o]
            else:
                idx = sorted(m for m in self.planes if a <= m < b)
                stack = np.stack([self.planes[m] for m in idx], axis=1)       # (C, n, y, x)
                plane = np.stack([resample.along_z(c, idx[0], self.mshape[0], np.array([o]), self.crop_shape[0],
                                                   self.order_z)[0] for c in stack])
            self._write(o, plane)
            for m in [m for m in self.planes if m < self._needed(o + 1)[0]]:
                del self.planes[m]
            self.next_out += 1

    def _write(self, o: int, logits: np.ndarray) -> None:
        probs = self.pred.lm.apply_inference_nonlin(torch.from_numpy(logits))[1].numpy()
        if list(self.pred.pm.transpose_forward[1:]) != [1, 2]:
            probs = probs.T
        (bz0, _), (y0, y1), (x0, x1) = self.bbox
        full = np.zeros(self.full_yx, np.float32)
        full[y0:y1, x0:x1] = probs
        self.sink(bz0 + o, full[None])
