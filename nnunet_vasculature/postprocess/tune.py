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
from nnunet_vasculature.postprocess.morphology import (
    closed_reader,
    fraction_at_levels,
    level_for_fraction,
    level_histogram,
)
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


def determine(prob_paths: list, label_paths: list, cc_candidates: Sequence[int] = CC_CANDIDATES,
              closing_radii: Sequence[int] = (), by_fraction: bool = False) -> dict:
    """Best threshold by mean surface Dice over kidneys, then whether a 3D closing (``closing_radii``,
    voxels) and small-component removal help, each kept only if it improves the mean.

    ``by_fraction``: each kidney is thresholded where its predicted foreground is the tuned fraction of
    its voxels (the fraction is chosen by the same mean surface Dice) instead of at one probability.
    """
    if len(prob_paths) != len(label_paths):
        raise UserError(f"{len(prob_paths)} probability volumes but {len(label_paths)} label volumes")
    curves, kidneys, pairs, hists = [], [], [], []
    for p_path, l_path in zip(prob_paths, label_paths):
        prob, attrs = open_probabilities(p_path)
        labels = open_labels(l_path)
        _check_shapes(prob, labels, p_path, l_path)
        if not _any_foreground(labels):
            raise UserError(f"{l_path}: label volume is empty; it cannot rank thresholds")
        name = _name(p_path, attrs)
        print(f"sweeping 256 thresholds on {name} {tuple(prob.shape)}")
        curves.append(surface_dice_sweep(prob, labels, block=BLOCK))
        hists.append(level_histogram(prob, BLOCK))
        kidneys.append(name)
        pairs.append((prob, labels))
    mean = np.mean(curves, axis=0)
    best = int(np.argmax(mean))
    fraction, fraction_score, fraction_levels = _best_fraction(curves, hists)
    levels = fraction_levels if by_fraction else [best] * len(pairs)
    base = fraction_score if by_fraction else float(mean[best])
    per_kidney_best = {k: float(c[lv]) for k, c, lv in zip(kidneys, curves, levels)}
    # closing, then small-component removal on top of the chosen closing, each kept only if it helps
    closing_scores = {0: base}
    for r in closing_radii:
        print(f"testing a closing of radius {r}")
        closing_scores[int(r)] = float(np.mean([_cc_scores(prob, labels, lv, [0], int(r))[0]
                                                for (prob, labels), lv in zip(pairs, levels)]))
    radius = _best_key(closing_scores)
    cc_scores = {0: closing_scores[radius]}
    if cc_candidates:
        totals = np.zeros(len(cc_candidates))
        for (prob, labels), name, lv in zip(pairs, kidneys, levels):
            print(f"testing component removal on {name}")
            totals += _cc_scores(prob, labels, lv, list(cc_candidates), radius)
        cc_scores.update({int(s): float(t / len(pairs)) for s, t in zip(cc_candidates, totals)})
    min_size = _best_key(cc_scores)
    return {
        "threshold_mode": "fraction" if by_fraction else "probability",
        "threshold": best / 255.0,
        "threshold_u8": best,
        "vessel_fraction": fraction,
        "closing_radius": int(radius),
        "min_component_voxels": int(min_size),
        "mean_surface_dice": cc_scores[min_size],
        "mean_surface_dice_at_0.5": float(mean[LEVEL_HALF]),
        "mean_surface_dice_at_threshold": float(mean[best]),
        "mean_surface_dice_at_fraction": fraction_score,
        "kidneys": kidneys,
        "per_kidney_levels": {k: int(lv) for k, lv in zip(kidneys, levels)},
        "per_kidney_at_threshold": per_kidney_best,
        "per_kidney_at_0.5": {k: float(c[LEVEL_HALF]) for k, c in zip(kidneys, curves)},
        "closing_scores": {str(k): v for k, v in closing_scores.items()},
        "component_removal_scores": {str(k): v for k, v in cc_scores.items()},
        "curve_u8_levels": "entry k: mean surface Dice of probability_u8 >= k",
        "mean_curve": [float(x) for x in mean],
        "per_kidney_curves": {k: [float(x) for x in c] for k, c in zip(kidneys, curves)},
    }


def _best_key(scores: dict[int, float]) -> int:
    """The option with the best score, the smallest on ties; 0 (off) unless it strictly helps."""
    key = max(scores, key=lambda s: (scores[s], -s))
    return key if scores[key] > scores[0] else 0


def _best_fraction(curves: list[np.ndarray], hists: list[np.ndarray]) -> tuple[float, float, list[int]]:
    """The foreground fraction whose per-kidney levels give the best mean surface Dice; every fraction
    reached by some kidney at some level is a candidate."""
    fracs = [fraction_at_levels(h) for h in hists]
    candidates = np.unique(np.concatenate([f[1:] for f in fracs]))
    candidates = candidates[candidates > 0]
    if not len(candidates):
        return 0.0, float(np.mean([c[255] for c in curves])), [255] * len(curves)
    score = np.zeros(len(candidates))
    for c, f in zip(curves, fracs):
        # level for each candidate: the highest level whose fraction is >= the candidate (f is non-increasing)
        lv = np.searchsorted(-f[1:], -candidates, side="right")
        score += c[np.clip(lv, 1, 255)]
    i = int(np.argmax(score))
    best = float(candidates[i])
    return best, float(score[i] / len(curves)), [level_for_fraction(h, best) for h in hists]


def _any_foreground(vol: ZSliceable) -> bool:
    return any(np.asarray(vol[z:z + BLOCK]).any() for z in range(0, vol.shape[0], BLOCK))


def _cc_scores(prob: ZSliceable, labels: ZSliceable, level: int, sizes: list[int], closing: int = 0) -> np.ndarray:
    read = closed_reader(lambda a, b: np.asarray(prob[a:b]) >= level, prob.shape[0], closing)
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
        mode = str(pp.get("threshold_mode", "probability"))
        fraction = float(pp.get("vessel_fraction", 0.0))
        closing = int(pp.get("closing_radius", 0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a postprocessing.json from 'tune' ({type(e).__name__}: {e})") from None
    if not 0 <= level <= 255:
        raise UserError(f"{path}: threshold_u8 {level} outside 0..255")
    if mode not in ("probability", "fraction"):
        raise UserError(f"{path}: threshold_mode {mode!r} is neither 'probability' nor 'fraction'")
    if mode == "fraction" and not 0 < fraction <= 1:
        raise UserError(f"{path}: vessel_fraction {fraction} outside (0, 1]")
    if closing < 0 or min_size < 0:
        raise UserError(f"{path}: negative closing_radius or min_component_voxels")
    return {"threshold_u8": level, "min_component_voxels": min_size, "threshold_mode": mode,
            "vessel_fraction": fraction, "closing_radius": closing}


def masks(prob: ZSliceable, pp: dict) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (z0, boolean block) of the post-processed mask of a probability volume: threshold (one
    probability, or this volume's level for the tuned vessel fraction), closing, small-component removal."""
    level = pp["threshold_u8"]
    if pp.get("threshold_mode") == "fraction":
        level = level_for_fraction(level_histogram(prob, BLOCK), pp["vessel_fraction"])
    read = closed_reader(lambda a, b: np.asarray(prob[a:b]) >= level, prob.shape[0], pp.get("closing_radius", 0))
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
