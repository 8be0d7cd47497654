"""Streaming prediction over gigapixel slides with an nnU-Net 2D model (HuBMAP Hacking the Kidney).

The slide is predicted at the training downscale (``downscale`` in the model's dataset.json, written
by ``convert hubmap-kidney``) on nnU-Net's sliding-window grid (``compute_steps_for_sliding_window``),
with nnU-Net's Gaussian weights (``compute_gaussian``), flip TTA
(``nnUNetPredictor._internal_maybe_mirror_and_predict``) and the model's own intensity normalisation
(nnU-Net's ``DefaultPreprocessor._normalize``). Tiles are read one by one from the TIFF (full-resolution
region, area-downscaled); tiles without tissue on the HSV thumbnail are skipped (probability 0).

Back to full resolution as nnU-Net's export does it (``resampling_fn_probabilities``: skimage ``resize``
of the logits with order 1, edge mode, then softmax): the averaged logits are interpolated bilinearly
(pixel centres aligned: full-resolution pixel x sits at downscaled coordinate (x + 0.5) / ds - 0.5,
clamped at the edges), then P(glomerulus) = 1 - softmax background.

Memory: the grid is walked column of tiles by column of tiles; once a column is done, every downscaled
column left of the next one is final, so it is normalised and upsampled in chunks of rows; the
full-resolution columns that need only final downscaled columns (half a downscaled pixel lags behind)
are written to the uint8 probability store and fed to the column-major RLE encoder. Only one column of
tiles of logits (classes x height/downscale x patch width), one chunk of interpolated logits and one
full-height uint8 strip are in memory: peak RSS grows with the slide's height, not with its area.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.inference.options import DEFAULT_CHECKPOINT, PredictionOptions
from nnunet_vasculature.io.store import SLIDE_ENCODING

LEVEL_HALF = 128        # uint8 >= 128 <=> foreground probability >= 0.5 (argmax of two classes)
THUMB = 8               # tissue thumbnail: one pixel per THUMB downscaled pixels
ROWS = 2048             # full-resolution rows interpolated at a time
UNPREDICTED = -30.0     # foreground logits of pixels no tile covered (skipped, no tissue): P ~ 1e-13


def _linear(n: int, start: int, stop: int, ds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution pixels [start, stop) of an axis of ``n`` downscaled pixels: (left index, right index,
    weight of the right one); pixel x sits at (x + 0.5) / ds - 0.5, clamped to [0, n - 1] (skimage's order 1
    ``resize`` with mode "edge", which nnU-Net resamples probabilities with)."""
    num = 2 * np.arange(start, stop) + 1 - ds          # 2 ds * coordinate, exact in integers
    f = num // (2 * ds)
    t = ((num - f * 2 * ds) / (2 * ds)).astype(np.float32)
    return np.clip(f, 0, n - 1), np.clip(f + 1, 0, n - 1), t


class _Upsampler:
    """Takes final downscaled logit columns left to right, emits full-resolution uint8 probability strips.

    The full-resolution columns whose right neighbour column is not final yet wait for the next call
    (the last downscaled column is kept for that); ``last=True`` flushes to the slide's right edge."""

    def __init__(self, ds: int, height: int, width: int, hs: int, ws: int, sink: "StripSink"):
        self.ds, self.height, self.width, self.hs, self.ws, self.sink = ds, height, width, hs, ws, sink
        self.prev: np.ndarray | None = None
        self.done = 0                                   # full-resolution columns emitted so far

    def add(self, logits: np.ndarray, a: int, b: int) -> None:
        """``logits`` (classes, hs, b - a): downscaled columns [a, b), final."""
        cols = logits if self.prev is None else np.concatenate([self.prev, logits], axis=2)
        c0 = a - (0 if self.prev is None else 1)
        ds = self.ds
        end = self.width if b >= self.ws else min(self.width, (2 * ds * (b - 1) + ds) // 2)
        if end > self.done:
            j0, j1, s = _linear(self.ws, self.done, end, ds)
            j0, j1 = j0 - c0, j1 - c0
            out = np.empty((self.height, end - self.done), np.uint8)
            for r0 in range(0, self.height, ROWS):
                r1 = min(self.height, r0 + ROWS)
                i0, i1, t = _linear(self.hs, r0, r1, ds)
                lo, hi = int(i0.min()), int(i1.max()) + 1
                v = cols[:, lo:hi]
                v = v[:, i0 - lo] * (1 - t)[:, None] + v[:, i1 - lo] * t[:, None]      # (classes, rows, columns)
                lg = v[:, :, j0] * (1 - s) + v[:, :, j1] * s
                lg -= lg.max(0, keepdims=True)
                e = np.exp(lg)
                fg = 1 - e[0] / e.sum(0)
                out[r0:r1] = np.rint(np.clip(fg, 0, 1) * 255).astype(np.uint8)
            self.sink(self.done, out)
            self.done = end
        self.prev = cols[:, :, -1:].copy()


class SlidePredictor:
    def __init__(self, options: PredictionOptions, device: str = "cpu", batch_size: int = 8):
        """A 2D RGB model loaded by :func:`~nnunet_vasculature.inference.model.load_model` (folder check,
        device check, weights-only checkpoints, ``nnUNet_compile``).

        Args:
            options: the model (folder, folds, checkpoint) and how it is applied (``tta``: flip TTA,
                ``step_size``); the other test-time options are not supported here.
            device: where the networks run (``cuda``, ``cpu``, ``mps`` or a ``torch.device``).
            batch_size: tiles per forward pass.
        """
        import torch
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        from nnunet_vasculature.inference.model import load_model, resolve_device
        unsupported = [name for name, on in (("tta_rotations", options.tta_rotations),
                                             ("tta_permutations", options.tta_permutations),
                                             ("tta_scale", options.tta_scale != 1.0),
                                             ("tissue_mask", options.tissue_mask)) if on]
        if unsupported:
            raise UserError(f"{options.model_folder}: predict hubmap-kidney does not take {', '.join(unsupported)}")
        model_folder = options.model_folder
        dev = resolve_device(device) if isinstance(device, str) else device
        self.model = load_model(model_folder, options.folds, options.checkpoint, dev, options.tta,
                                options.step_size)
        self.options, self.device, self.step, self.batch_size = options, dev, options.step_size, batch_size
        self.cm = self.model.configuration_manager
        if len(self.cm.patch_size) != 2:
            raise UserError(f"{model_folder}: a {len(self.cm.patch_size)}D model; predict hubmap-kidney needs a "
                            f"2D model")
        self.patch = tuple(int(p) for p in self.cm.patch_size)
        self.downscale = int(self.model.dataset_json.get("downscale", 1))
        if len(self.model.dataset_json["channel_names"]) != 3:
            n = len(self.model.dataset_json["channel_names"])
            raise UserError(f"{model_folder}: the model takes {n} channels, not RGB")
        self.gaussian = compute_gaussian(self.patch, sigma_scale=1. / 8, value_scaling_factor=10,
                                         device=torch.device("cpu")).numpy().astype(np.float32)
        self.props = self.model.plans_manager.foreground_intensity_properties_per_channel
        self.model_folder = model_folder

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8/float -> (3, 1, h, w) float32, normalised as nnU-Net's preprocessing does."""
        from nnunet_vasculature.inference.model import normalize_channels
        data = np.moveaxis(np.asarray(rgb, np.float32), -1, 0)[:, None].copy()
        return normalize_channels(data, self.cm, self.props)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        import torch
        x = torch.from_numpy(batch).to(self.device)
        out = None
        with torch.inference_mode():
            for net in self.model.networks:
                y = self.model.mirrored(net)(x).float().cpu()
                out = y if out is None else out + y
        return (out / len(self.model.networks)).numpy()

    def predict(self, slide: "Slide", sink: "StripSink", skip_empty: bool = True,  # noqa: F821
                progress: bool = True) -> dict:
        """Predict ``slide``; full-resolution uint8 probability strips go to ``sink(x0, strip)``, left to right."""
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        from tqdm import tqdm

        from nnunet_vasculature.io.slide import area_downscale, tissue_mask
        ds, (ph, pw) = self.downscale, self.patch
        hs, ws = -(-slide.height // ds), -(-slide.width // ds)
        hp, wp = max(hs, ph), max(ws, pw)
        ys, xs = compute_steps_for_sliding_window((hp, wp), self.patch, self.step)
        tissue = tissue_mask(slide.thumbnail(ds * THUMB)) if skip_empty else None
        n_cls = len(self.model.label_manager.foreground_labels) + 1
        acc = np.zeros((n_cls, hp, pw), np.float32)
        wsum = np.zeros((hp, pw), np.float32)
        done, skipped = 0, 0
        up = _Upsampler(ds, slide.height, slide.width, hs, ws, sink)
        bar = tqdm(total=len(ys) * len(xs), desc=f"predict {slide.path.name}", unit="tile", disable=not progress)
        for k, sx in enumerate(xs):
            tiles = []
            for sy in ys:
                if tissue is not None and not tissue[sy // THUMB:-(-(sy + ph) // THUMB),
                                                     sx // THUMB:-(-(sx + pw) // THUMB)].any():
                    skipped += 1
                    continue
                rgb = np.rint(area_downscale(slide.region(sy * ds, (sy + ph) * ds, sx * ds, (sx + pw) * ds), ds, 255))
                x = np.zeros((3, 1, ph, pw), np.float32)           # nnU-Net pads the normalised image with 0
                x[:, :, :rgb.shape[0], :rgb.shape[1]] = self.normalize(rgb)
                tiles.append((sy, x[:, 0]))
            for b in range(0, len(tiles), self.batch_size):
                chunk = tiles[b:b + self.batch_size]
                logits = self._logits(np.stack([t[1] for t in chunk]))
                for (sy, _), lg in zip(chunk, logits):
                    acc[:, sy:sy + ph] += lg * self.gaussian
                    wsum[sy:sy + ph] += self.gaussian
            bar.update(len(ys))
            nxt = xs[k + 1] if k + 1 < len(xs) else wp
            n = nxt - sx
            if done < ws:
                final = min(ws, nxt)                           # downscaled columns [sx, final) are final
                w = wsum[:hs, :final - sx]
                lg = acc[:, :hs, :final - sx] / np.maximum(w, 1e-8)
                lg[1:, w == 0] = UNPREDICTED
                lg[0, w == 0] = 0
                up.add(lg, sx, final)
                done = nxt
            acc[:, :, :pw - n] = acc[:, :, n:]
            acc[:, :, pw - n:] = 0
            wsum[:, :pw - n] = wsum[:, n:]
            wsum[:, pw - n:] = 0
        bar.close()
        return {"tiles": len(ys) * len(xs), "skipped_without_tissue": skipped}


class StripSink:
    """Receives full-resolution uint8 probability strips left to right: a zarr array and the RLE."""

    def __init__(self, store: Path, height: int, width: int, level: int = LEVEL_HALF):
        from nnunet_vasculature.io.rle import ColumnStripEncoder
        from nnunet_vasculature.io.store import create_slide_array
        self.arr = create_slide_array(store, height, width)
        self.enc = ColumnStripEncoder(height, empty="")
        self.level, self.next = level, 0

    def __call__(self, x0: int, strip: np.ndarray) -> None:
        if x0 != self.next:
            raise RuntimeError(f"strip at column {x0}, expected {self.next}")
        self.arr[:, x0:x0 + strip.shape[1]] = strip
        self.enc.add(strip >= self.level)
        self.next = x0 + strip.shape[1]


def slide_record(options: PredictionOptions) -> dict:
    """The run record of ``predict hubmap-kidney``, the same in every ``<id>.zarr`` and in ``predict_slide.json``
    (the ``source`` of ``predict``'s probability store, :mod:`nnunet_vasculature.io.store`).

    Args:
        options: the prediction options.

    Returns:
        ``{"tool": "predict hubmap-kidney", "model": options.to_json()}``.
    """
    return {"tool": "predict hubmap-kidney", "model": options.to_json()}


def predict_slides(inputs: list[Path], out: Path, options: PredictionOptions, device: str = "cuda",
                   skip_empty: bool = True, overwrite: bool = False, info_csv: Path | None = None,
                   predictor: SlidePredictor | None = None) -> Path:
    """Predict each slide into ``out/<id>.zarr`` and ``out/predictions.csv`` (``id,predicted`` at 0.5).

    Args:
        inputs: slide TIFFs or folders of them.
        out: the output folder (written whole or not at all).
        options: the model and how it is applied (recorded as ``source``, :func:`slide_record`).
        device: where the networks run (when ``predictor`` is None).
        skip_empty: skip the tiles without tissue on the slide's thumbnail (probability 0 there).
        overwrite: replace an existing ``out``.
        info_csv: the dataset information CSV (:func:`slide_sizes`).
        predictor: an already loaded :class:`SlidePredictor` made with ``options``, to load a model once for
            several calls.

    Returns:
        ``out``.
    """
    from nnunet_vasculature.io.slide import Slide
    if predictor is not None and predictor.options != options:
        raise ValueError("predictor was made with other options than the ones given")
    paths = []
    for p in inputs:
        p = Path(p)
        paths += sorted(p.glob("*.tiff")) + sorted(p.glob("*.tif")) if p.is_dir() else [p]
    if not paths:
        raise UserError(f"{inputs[0]}: no .tiff slides")
    sizes = slide_sizes(Path(info_csv) if info_csv else None, paths[0].parent.parent)
    if predictor is None:
        predictor = SlidePredictor(options, device)
    source = slide_record(options)
    rows = []
    with atomic_dir(Path(out), overwrite) as tmp:
        for p in paths:
            r = sizes.get(p.stem, {})
            with Slide(p, r.get("height"), r.get("width")) as slide:
                sink = StripSink(tmp / f"{p.stem}.zarr", slide.height, slide.width)
                stats = predictor.predict(slide, sink, skip_empty)
                sink.arr.attrs.update({"slide": p.stem, "encoding": SLIDE_ENCODING,
                                       "downscale": predictor.downscale, "source": source, **stats})
                rows.append((p.stem, sink.enc.finish()))
        with open(tmp / "predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("id", "predicted"))
            w.writerows(rows)
        (tmp / "predict_slide.json").write_text(json.dumps({"slides": [r[0] for r in rows], "threshold": 0.5,
                                                            "source": source}))
    print(f"wrote {out}: {len(rows)} probability stores and predictions.csv (threshold 0.5)")
    return Path(out)


def slide_sizes(info_csv: Path | None, kaggle_dir: Path) -> dict[str, dict]:
    """Slide sizes by id from the dataset information CSV, to check each TIFF against.

    Args:
        info_csv: the file ``--info`` gives (any name); None: ``kaggle_dir/HuBMAP-20-dataset_information.csv``
            when it exists (no check otherwise).
        kaggle_dir: the Kaggle download the slides come from (the slides' folder's parent).

    Returns:
        Rows by slide id (``height``, ``width``, ...); a given file that is missing or unreadable is a
        one-line UserError.
    """
    from nnunet_vasculature.io.slide import INFO_CSV, read_info
    if info_csv is None:
        return read_info(kaggle_dir) if (Path(kaggle_dir) / INFO_CSV).is_file() else {}
    info_csv = Path(info_csv)
    if not info_csv.is_file():
        raise UserError(f"{info_csv}: --info file not found" if not info_csv.exists() else
                        f"{info_csv}: --info must be a CSV file (the dataset information), not a folder")
    return read_info(info_csv)


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Registers ``predict hubmap-kidney`` under ``groups["predict"]``.

    Args:
        groups: the competition sub-parsers of each command (:func:`nnunet_vasculature.competitions.command_groups`).
    """
    p = groups["predict"].add_parser("hubmap-kidney", help="predict whole slides with an nnU-Net 2D model",
                                     description="Predict HuBMAP Hacking the Kidney slides tile by tile into "
                                                 "<id>.zarr uint8 probability stores and predictions.csv.")
    p.add_argument("-i", dest="input", type=Path, nargs="+", required=True, help="slide TIFFs or folders of them")
    p.add_argument("-o", dest="output", type=Path, required=True,
                   help="output folder: <id>.zarr (uint8 probabilities) per slide and predictions.csv")
    p.add_argument("-m", dest="model_folder", type=Path, help="model folder (instead of -d/-c/-tr/-p)")
    p.add_argument("-d", dest="dataset_id", help="dataset ID/name of the trained model")
    p.add_argument("-c", dest="configuration", default="2d")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainer")
    p.add_argument("-p", dest="plans", default="nnUNetPlans")
    p.add_argument("-f", dest="folds", nargs="+", default=["0"], help="folds to average (default 0)")
    p.add_argument("-chk", dest="checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("-device", dest="device", default="cuda", choices=("cuda", "cpu", "mps"))
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (fraction of the patch)")
    p.add_argument("--info", type=Path, metavar="CSV",
                   help="the dataset information CSV with each slide's width and height, checked against the "
                        "TIFFs (default: HuBMAP-20-dataset_information.csv beside the slides' folder, if there)")
    p.add_argument("--all_tiles", action="store_true", help="predict tiles without tissue too")
    p.add_argument("--overwrite", action="store_true")

    def run(a: argparse.Namespace) -> None:
        from nnunet_vasculature.inference.model import model_folder_from_args, resolve_device
        if a.model_folder is None and a.dataset_id is None:
            raise UserError("give -m MODEL_FOLDER or -d DATASET (with -c/-tr/-p)")
        folder = a.model_folder or model_folder_from_args(a.dataset_id, a.configuration, a.trainer, a.plans)
        options = PredictionOptions.of(folder, a.folds, checkpoint=a.checkpoint, tta=not a.disable_tta,
                                       step_size=a.step_size)          # -step_size checked here, as predict does
        resolve_device(a.device)          # before any work
        predict_slides(a.input, a.output, options, a.device, not a.all_tiles, a.overwrite, a.info)
    p.set_defaults(func=run)
