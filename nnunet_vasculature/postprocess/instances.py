"""Vessel instances from nnU-Net probabilities (HuBMAP vasculature, DOMAIN §8).

nnU-Net is semantic; the competition scores instances with a confidence each. ``instances_from_probabilities``
thresholds the vessel probability, labels connected components (optionally splits touching vessels with a
distance-transform watershed), drops components mostly inside predicted glomeruli (vessels are not annotated
there, so predictions there are false positives), drops small ones, scores each by its mean vessel probability
and optionally grows each instance by a few pixels (without overlaps), as a correction for tight outlines.
"""
from __future__ import annotations

import argparse
import json
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
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not an nnU-Net probabilities .npz ({e})") from None
    if prob.ndim == 4:
        prob = prob[:, 0]
    if prob.ndim != 3 or prob.shape[0] < 2:
        raise UserError(f"{path}: expected probabilities (C, 1, H, W) with C >= 2, got {prob.shape}")
    return prob[VESSEL], (prob[GLOMERULUS] if prob.shape[0] > GLOMERULUS else None)


def list_probabilities(folder: Path) -> list[Path]:
    """The ``<case>.npz`` files of a prediction folder (sorted); UserError if none."""
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise UserError(f"{folder}: no <case>.npz probabilities (run nnUNetv2_predict with --save_probabilities)")
    return files


def load_params(path: Path | None) -> InstanceParams:
    """InstanceParams from a ``tune --competition hubmap-vasculature`` JSON (its ``instances`` entry)."""
    if path is None:
        return InstanceParams()
    try:
        d = json.loads(Path(path).read_text())["instances"]
        return InstanceParams(**{k: d[k] for k in asdict(InstanceParams())})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a hubmap-vasculature postprocessing JSON ({e})") from None


def write_instances(folder: Path, out: Path, p: InstanceParams, overwrite: bool = False) -> Path:
    """``<case>.npz`` with ``instances`` (int32 H×W) and ``scores`` for every probabilities file."""
    from tqdm import tqdm
    files = list_probabilities(folder)
    with atomic_dir(Path(out), overwrite) as tmp:
        for f in tqdm(files, desc="instances", unit="tile"):
            lab, scores = instances_from_probabilities(*read_probabilities(f), p)
            np.savez_compressed(tmp / f.name, instances=lab, scores=scores)
        (tmp / "instances.json").write_text(json.dumps(asdict(p), indent=1))
    return Path(out)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``instances``: registers the command in ``sub``."""
    d = InstanceParams()
    p = sub.add_parser("instances", help="turn vessel probabilities into scored instances (HuBMAP vasculature)")
    p.add_argument("-i", dest="input", type=Path, required=True,
                   help="folder of <case>.npz from nnUNetv2_predict --save_probabilities")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output folder of <case>.npz instances")
    p.add_argument("-pp", type=Path, help="take the parameters from a tune --competition hubmap-vasculature JSON")
    p.add_argument("--threshold", type=float, default=d.threshold)
    p.add_argument("--min_size", type=int, default=d.min_size, help="drop instances of fewer pixels")
    p.add_argument("--dilate", type=int, default=d.dilate, help="grow each instance by this many pixels")
    p.add_argument("--split", action="store_true", help="split touching vessels (distance-transform watershed)")
    p.add_argument("--no_glomerulus_filter", action="store_true",
                   help="keep vessel predictions inside predicted glomeruli")
    p.add_argument("--overwrite", action="store_true")

    def run(a: argparse.Namespace) -> None:
        params = load_params(a.pp) if a.pp else InstanceParams(a.threshold, a.min_size, a.dilate, a.split,
                                                               not a.no_glomerulus_filter)
        print(f"wrote {write_instances(a.input, a.output, params, a.overwrite)}")
    p.set_defaults(func=run)
