"""Vessel instances from nnU-Net probabilities (HuBMAP vasculature, DOMAIN §8).

nnU-Net is semantic; the competition scores instances with a confidence each. ``instances_from_probabilities``
thresholds the vessel probability, labels connected components (optionally splits touching vessels with a
distance-transform watershed), drops components mostly inside predicted glomeruli (vessels are not annotated
there, so predictions there are false positives), drops small ones, scores each by its mean vessel probability
and optionally grows each instance by a few pixels (without overlaps), as a correction for tight outlines.
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_dir

VESSEL, GLOMERULUS = 1, 2          # label values of convert hubmap-vasculature


@dataclass
class InstanceParams:
    threshold: float = 0.5
    min_size: int = 0
    dilate: int = 0
    split: bool = False
    glomerulus_filter: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and 0 <= self.threshold <= 1):
            raise ValueError(f"threshold {self.threshold!r} is not a probability in [0, 1]")
        for name in ("min_size", "dilate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} {value!r} is not an integer >= 0")


def instances_from_probabilities(vessel: np.ndarray, glomerulus: np.ndarray | None = None,
                                 p: InstanceParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``vessel``/``glomerulus``: (H, W) probabilities in [0, 1]. Returns an int32 label image (instances
    1..n) and ``n`` float scores (mean vessel probability of each instance before dilation)."""
    from scipy import ndimage
    from skimage.measure import label
    from skimage.segmentation import expand_labels, watershed
    p = p or InstanceParams()
    vessel = np.asarray(vessel, np.float32)
    mask = vessel >= p.threshold
    lab = label(mask, connectivity=1)
    if p.split and lab.max():
        from skimage.feature import peak_local_max
        dist = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(dist, min_distance=5, labels=lab, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        lab = watershed(-dist, markers, mask=mask)
    n = int(lab.max())
    if n == 0:
        return np.zeros(vessel.shape, np.int32), np.zeros(0)
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(vessel), lab, idx)
    keep = area >= max(p.min_size, 1)
    if p.glomerulus_filter and glomerulus is not None:
        glom = ndimage.binary_fill_holes(np.asarray(glomerulus) >= 0.5)
        inside = ndimage.sum_labels(glom.astype(np.float32), lab, idx)
        keep &= inside <= 0.5 * area
    score = ndimage.mean(vessel, lab, idx)
    lut = np.zeros(n + 1, np.int32)
    lut[idx[keep]] = np.arange(1, keep.sum() + 1)
    lab = lut[lab]
    if p.dilate > 0 and keep.any():
        lab = expand_labels(lab, distance=p.dilate).astype(np.int32)
    return lab, np.asarray(score[keep], np.float64)


def read_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Vessel and glomerulus (or None) probability (H, W) of a stock ``--save_probabilities`` ``.npz``
    (``probabilities`` of shape (C, 1, H, W) for 2D natural images, channels in label order)."""
    try:
        with np.load(path) as z:
            prob = z["probabilities"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"{path}: not an nnU-Net probabilities .npz ({type(e).__name__}: {e})") from None
    if prob.ndim == 4:
        prob = prob[:, 0]
    if prob.ndim != 3 or prob.shape[0] < 2:
        raise UserError(f"{path}: expected probabilities (C, 1, H, W) with C >= 2, got {prob.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        raise UserError(f"{path}: probabilities of dtype {prob.dtype}, expected floats in [0, 1]")
    if not np.isfinite(prob).all():
        raise UserError(f"{path}: probabilities are not finite (NaN or infinity)")
    if prob.min() < -1e-3 or prob.max() > 1 + 1e-3:
        raise UserError(f"{path}: probabilities outside [0, 1] (min {prob.min():.3g}, max {prob.max():.3g})")
    return prob[VESSEL], (prob[GLOMERULUS] if prob.shape[0] > GLOMERULUS else None)


def list_probabilities(folder: Path) -> list[Path]:
    """The ``<case>.npz`` files of a prediction folder (sorted); UserError if none."""
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise UserError(f"{folder}: no <case>.npz probabilities (run nnUNetv2_predict with --save_probabilities)")
    return files


def write_instances(folder: Path, out: Path, p: InstanceParams, overwrite: bool = False) -> Path:
    """``<case>.npz`` with ``instances`` (int32 H×W) and ``scores`` for every probabilities file.

    Args:
        folder: ``<case>.npz`` probabilities (nnUNetv2_predict --save_probabilities).
        out: the folder to write (all or nothing).
        p: the instance parameters.
        overwrite: replace an existing ``out``.

    Returns:
        ``out``.
    """
    from tqdm import tqdm
    files = list_probabilities(folder)
    with atomic_dir(Path(out), overwrite) as tmp:
        for f in tqdm(files, desc="instances", unit="tile"):
            lab, scores = instances_from_probabilities(*read_probabilities(f), p)
            np.savez_compressed(tmp / f.name, instances=lab, scores=scores)
        (tmp / "instances.json").write_text(json.dumps(asdict(p), indent=1))
    return Path(out)
