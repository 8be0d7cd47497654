"""Helpers of the prediction tests: test volumes, Kaggle kidney folders, the streaming and the stock
predictions of a volume, their comparison, and checkpoints in stock nnU-Net's format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunet_vasculature.io.volume_source import VolumeSource

MARGIN = 4      # stock aggregates tiles in float16: its volume border is the least exact part


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (ndi.gaussian_filter(rng.random(shape), 2) * 30000 + 1000).astype(np.float32)


def _stock(folder, img, spacing, folds, tta):
    """Stock nnUNetPredictor's foreground probabilities of the whole volume ``img``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    p = nnUNetPredictor(use_mirroring=tta, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), list(folds))
    _, probs = p.predict_single_npy_array(img[None], {"spacing": list(spacing)}, None, None, True)
    return probs[1]


def _ours(folder, img, spacing, folds, tta, start=0, predictor=None, end=None, scan=None):
    """Planes [start, end) of the streaming prediction of ``img``, each emitted exactly once."""
    src = VolumeSource("v", img.shape, spacing, [str(i) for i in range(img.shape[0])],
                       [(0, img.shape[0], lambda a, b: img[a:b])])
    out = {}

    def sink(z, p):
        for i, plane in enumerate(p):
            assert z + i not in out
            out[z + i] = plane
    predictor = predictor or StreamingPredictor(PredictionOptions.of(folder, folds, tta=tta),
                                                             torch.device("cpu"))
    predictor.predict(src, sink, start, end=end, scan=scan)
    stop = img.shape[0] if end is None else min(end, img.shape[0])
    assert sorted(out) == list(range(start, stop))
    return np.stack([out[z] for z in sorted(out)]) if out else np.zeros((0, *img.shape[1:]), np.float32)


def _compare(ours, stock):
    m = MARGIN
    d = np.abs(ours - stock)[m:-m, m:-m, m:-m]
    q = np.abs(np.rint(ours * 255).astype(int) - np.rint(stock * 255).astype(int))[m:-m, m:-m, m:-m]
    assert d.max() <= 5e-3 and d.mean() <= 5e-4, (d.max(), d.mean())
    assert q.max() <= 1 and (q > 0).mean() < 0.05


def _kaggle_kidney(root: Path, img: np.ndarray, name="kidney_5"):
    d = root / "test" / name / "images"
    d.mkdir(parents=True)
    for z in range(img.shape[0]):
        tifffile.imwrite(d / f"{z:04d}.tif", img[z].astype(np.uint16))
    return d.parent


def stock_format_checkpoint(path: Path, extra: object = None) -> None:
    """Rewrite the checkpoint at ``path`` with every entry stock ``nnUNetTrainer.save_checkpoint`` writes
    (nnunetv2 2.8): a real SGD optimizer's state after one step, nnU-Net's own logger state with numpy
    scalars as a training epoch logs them, ``_best_ema`` a numpy float, ``init_args`` with a torch.device.
    ``extra``: one more entry (e.g. a malicious object)."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger
    ckpt = torch.load(path, weights_only=True)
    params = [torch.nn.Parameter(v.clone().float()) for v in ckpt["network_weights"].values()]
    optimizer = torch.optim.SGD(params, 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    logger = LocalLogger()
    for key, value in (("mean_fg_dice", np.nanmean([0.25, 0.5])), ("ema_fg_dice", np.float64(0.3)),
                       ("dice_per_class_or_region", [np.float64(0.3)]), ("train_losses", np.mean([0.5, 0.4])),
                       ("val_losses", np.mean([0.6])), ("lrs", 0.01), ("epoch_start_timestamps", 1.0),
                       ("epoch_end_timestamps", 2.0)):
        logger.log(key, value, 0)
    ckpt.update({"optimizer_state": optimizer.state_dict(), "grad_scaler_state": None,
                 "logging": logger.get_checkpoint(), "_best_ema": np.float64(0.3), "current_epoch": 1,
                 "init_args": {"plans": {"dataset_name": "x"}, "configuration": ckpt["init_args"]["configuration"],
                               "fold": 0, "dataset_json": {"labels": {"background": 0}},
                               "device": torch.device("cpu")}})
    if extra is not None:
        ckpt["extra"] = extra
    torch.save(ckpt, path)
