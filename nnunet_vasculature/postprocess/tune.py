"""Determine and apply post-processing, nnU-Net style: ``determine`` picks the threshold (and whether
removing small components helps) on validation kidneys and saves the decision as readable JSON;
``apply`` turns probabilities into masks with that decision."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_dir, atomic_file
from nnunet_vasculature.io.sennet import slice_id, split_slice_id
from nnunet_vasculature.io.volumes import ZSliceable, open_labels, open_probabilities
from nnunet_vasculature.postprocess.components import StreamingComponents, remove_small_components
from nnunet_vasculature.postprocess.surface_dice import SurfaceDiceAccumulator, surface_dice_sweep

LEVEL_HALF = 128          # uint8 level equivalent to probability 0.5 (argmax of two classes)
CC_CANDIDATES = (8, 32, 128, 512)
BLOCK = 32


def _name(path: Path | str, attrs: dict) -> str:
    return str(attrs.get("kidney") or Path(str(path)).stem)


def _check_shapes(prob: ZSliceable, labels: ZSliceable, p_path: Path | str, l_path: Path | str) -> None:
    if tuple(prob.shape) != tuple(labels.shape):
        raise UserError(f"{p_path}: probabilities of shape {tuple(prob.shape)} but labels {l_path} "
                        f"have shape {tuple(labels.shape)}")


def determine(prob_paths: list, label_paths: list, cc_candidates: Sequence[int] = CC_CANDIDATES) -> dict:
    """Best threshold by mean surface Dice over kidneys, then whether small-component removal helps."""
    if len(prob_paths) != len(label_paths):
        raise UserError(f"{len(prob_paths)} probability volumes but {len(label_paths)} label volumes")
    curves, kidneys, pairs = [], [], []
    for p_path, l_path in zip(prob_paths, label_paths):
        prob, attrs = open_probabilities(p_path)
        labels = open_labels(l_path)
        _check_shapes(prob, labels, p_path, l_path)
        if not _any_foreground(labels):
            raise UserError(f"{l_path}: label volume is empty; it cannot rank thresholds")
        name = _name(p_path, attrs)
        print(f"sweeping 256 thresholds on {name} {tuple(prob.shape)}")
        curves.append(surface_dice_sweep(prob, labels, block=BLOCK))
        kidneys.append(name)
        pairs.append((prob, labels))
    mean = np.mean(curves, axis=0)
    best = int(np.argmax(mean))
    per_kidney_best = {k: float(c[best]) for k, c in zip(kidneys, curves)}
    # small-component removal at the chosen threshold, kept only if it improves the mean
    cc_scores = {0: float(mean[best])}
    if cc_candidates:
        totals = np.zeros(len(cc_candidates))
        for (prob, labels), name in zip(pairs, kidneys):
            print(f"testing component removal on {name}")
            totals += _cc_scores(prob, labels, best, list(cc_candidates))
        cc_scores.update({int(s): float(t / len(pairs)) for s, t in zip(cc_candidates, totals)})
    min_size = max(cc_scores, key=lambda s: (cc_scores[s], -s))
    if cc_scores[min_size] <= cc_scores[0]:
        min_size = 0
    return {
        "threshold": best / 255.0,
        "threshold_u8": best,
        "min_component_voxels": int(min_size),
        "mean_surface_dice": cc_scores[min_size],
        "mean_surface_dice_at_0.5": float(mean[LEVEL_HALF]),
        "kidneys": kidneys,
        "per_kidney_at_threshold": per_kidney_best,
        "per_kidney_at_0.5": {k: float(c[LEVEL_HALF]) for k, c in zip(kidneys, curves)},
        "component_removal_scores": {str(k): v for k, v in cc_scores.items()},
        "curve_u8_levels": "entry k: mean surface Dice of probability_u8 >= k",
        "mean_curve": [float(x) for x in mean],
        "per_kidney_curves": {k: [float(x) for x in c] for k, c in zip(kidneys, curves)},
    }


def _any_foreground(vol: ZSliceable) -> bool:
    return any(np.asarray(vol[z:z + BLOCK]).any() for z in range(0, vol.shape[0], BLOCK))


def _cc_scores(prob: ZSliceable, labels: ZSliceable, level: int, sizes: list[int]) -> np.ndarray:
    read = lambda a, b: np.asarray(prob[a:b]) >= level
    comps = StreamingComponents(read, prob.shape[0], BLOCK)
    accs = [SurfaceDiceAccumulator(prob.shape[1:]) for _ in sizes]
    for z0, masks in comps.filtered_blocks(sizes):
        gt = np.asarray(labels[z0:z0 + BLOCK])
        for acc, m in zip(accs, masks):
            acc.add(m, gt)
    return np.array([acc.score(0.0) for acc in accs])


def load_postprocessing(path: Path | str) -> dict:
    try:
        pp = json.loads(Path(path).read_text())
        level = int(pp["threshold_u8"])
        min_size = int(pp.get("min_component_voxels", 0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a postprocessing.json from 'tune' ({type(e).__name__}: {e})") from None
    if not 0 <= level <= 255:
        raise UserError(f"{path}: threshold_u8 {level} outside 0..255")
    return {"threshold_u8": level, "min_component_voxels": min_size}


def masks(prob: ZSliceable, pp: dict) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (z0, boolean block) of the post-processed mask of a probability volume."""
    level = pp["threshold_u8"]
    read = lambda a, b: np.asarray(prob[a:b]) >= level
    yield from remove_small_components(read, prob.shape[0], pp["min_component_voxels"], BLOCK)


def slice_ids(path: Path | str, prob: ZSliceable, attrs: dict) -> list[str]:
    """Kaggle ids (``kidney_5_0000``) of each slice of a probability volume."""
    if "slice_ids" in attrs:
        ids = list(attrs["slice_ids"])
    else:
        names = attrs.get("slice_names") or [f"{i:04d}" for i in range(prob.shape[0])]
        ids = [slice_id(_name(path, attrs), n) for n in names]
    if len(ids) != prob.shape[0]:
        raise UserError(f"{path}: {len(ids)} slice ids for {prob.shape[0]} slices")
    return ids


def apply_to_folder(prob_path: Path | str, pp_path: Path | str, out_dir: Path, overwrite: bool = False) -> Path:
    """Write the post-processed mask as per-slice TIFFs (0/255, the Kaggle label convention)."""
    prob, attrs = open_probabilities(prob_path)
    pp = load_postprocessing(pp_path)
    names = [split_slice_id(i)[1] for i in slice_ids(prob_path, prob, attrs)]
    with atomic_dir(Path(out_dir), overwrite) as tmp, tqdm(total=prob.shape[0], desc="apply", unit="slice") as bar:
        for z0, m in masks(prob, pp):
            for i, plane in enumerate(m):
                tifffile.imwrite(tmp / f"{names[z0 + i]}.tif", plane.astype(np.uint8) * np.uint8(255))
            bar.update(len(m))
    return Path(out_dir)


def plot_curve(result: dict, out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(256) / 255.0
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, c in result["per_kidney_curves"].items():
        ax.plot(x, c, lw=1, alpha=0.7, label=k)
    ax.plot(x, result["mean_curve"], "k", lw=2, label="mean")
    best = result["threshold_u8"]
    cc = result["min_component_voxels"]
    ax.axvline(result["threshold"], color="tab:red", ls="--",
               label=f"best {result['threshold']:.3f}: {result['mean_curve'][best]:.4f}"
                     + (f" ({result['mean_surface_dice']:.4f} without components < {cc} voxels)" if cc else ""))
    ax.axvline(0.5, color="grey", ls=":", label=f"0.5: {result['mean_surface_dice_at_0.5']:.4f}")
    ax.set_xlabel("threshold (foreground probability)")
    ax.set_ylabel("surface Dice (tolerance 0)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_json(obj: dict, path: Path) -> None:
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
