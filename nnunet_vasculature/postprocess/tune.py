"""What the three competitions' post-processing shares: the ``postprocessing.json`` record (its competition and
the tool version; the decision read as a :class:`~.mask_rule.MaskRule`), masks from uint8 probability levels,
picking the best option of a grid, warning when the pick sits at the edge of its grid,
and the score-versus-threshold picture.

Each competition's own tuning lives in its module (:mod:`.sennet`, :mod:`.hubmap_kidney`,
:mod:`.hubmap_vasculature`); this module knows none of them.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.volumes import ZSliceable
from nnunet_vasculature.postprocess.mask_rule import MaskRule

LEVEL_HALF = 128          # uint8 level equivalent to probability 0.5 (argmax of two classes)
BLOCK = 32                # planes (or columns) read at a time
WORKERS = 2               # threads of tune's passes: both cores of a laptop, ~2 blocks in memory at once
EDGE_LEVELS = 6           # a tuned uint8 level within this many levels of 0 or 255 is "at the edge" (~2 %)


def import_mask_packages() -> None:
    """Import what turning probabilities into masks needs (cc3d, scipy): the commands that do it call this
    first, so that a missing package is one line before any work (building the parsers imports none of them)."""
    import importlib
    for module in ("nnunet_vasculature.postprocess.components", "nnunet_vasculature.postprocess.morphology"):
        importlib.import_module(module)


def tool_version() -> str:
    """The installed nnunet-vasculature version (recorded in every postprocessing.json)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("nnunet-vasculature")
    except PackageNotFoundError:          # run from a source tree that was never installed
        return "unknown"


def postprocessing_competition(record: dict) -> str | None:
    """The competition a postprocessing.json belongs to: its ``competition`` entry, or for files written
    before that entry existed, the competition whose schema it has (None when it has none of them).

    Args:
        record: the parsed JSON.

    Returns:
        ``"sennet"``, ``"hubmap-kidney"``, ``"hubmap-vasculature"`` or None.
    """
    if "competition" in record:
        return str(record["competition"])
    if "instances" in record:
        return "hubmap-vasculature"
    if "slides" in record or "min_component_pixels" in record:
        return "hubmap-kidney"
    if "threshold_u8" in record:
        return "sennet"
    return None


def read_postprocessing(path: Path | str, competition: str) -> dict:
    """The parsed postprocessing.json of ``competition``; another competition's file is refused in one line.

    Args:
        path: the file ``tune COMPETITION`` wrote.
        competition: the competition of the command reading it.

    Returns:
        The parsed JSON object.

    Raises:
        UserError: unreadable, not a JSON object, or written for another competition.
    """
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a postprocessing.json from 'tune' ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a postprocessing.json from 'tune' (not a JSON object)")
    owner = postprocessing_competition(record)
    if owner is None:
        raise UserError(f"{path}: not a postprocessing.json from 'tune {competition}' (no threshold or instances)")
    if owner != competition:
        raise UserError(f"{path}: the postprocessing of {owner} ('tune {owner}'), not of {competition}; "
                        f"tune {competition} writes the one this needs")
    return record


def read_mask_rule(path: Path | str, competition: str) -> MaskRule:
    """The decision of a ``tune COMPETITION`` postprocessing.json, checked (:meth:`MaskRule.from_json`).

    Args:
        path: the file.
        competition: the competition of the command reading it (another competition's file is refused).

    Returns:
        The rule; a one-line UserError naming the file otherwise.
    """
    return MaskRule.from_json(read_postprocessing(path, competition), str(path), competition)


def write_postprocessing(result: dict, path: Path | str, competition: str) -> dict:
    """Write ``result`` as ``path`` (all or nothing) with its competition and the tool version first.

    Args:
        result: what the tuning found (JSON-serialisable).
        path: the postprocessing.json to write.
        competition: the competition it belongs to.

    Returns:
        The record as written.
    """
    record = {"competition": competition, "nnunet_vasculature_version": tool_version(),
              **{k: v for k, v in result.items() if k not in ("competition", "nnunet_vasculature_version")}}
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def masks(prob: ZSliceable, rule: MaskRule | Mapping) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (z0, boolean block) of the post-processed mask of a uint8 probability volume.

    Args:
        prob: (z, y, x) uint8 probability levels, read ``prob[a:b]``.
        rule: the decision: foreground where the level is at least ``rule.level`` (with ``by_fraction``: the
            level of this volume where the foreground is ``vessel_fraction`` of its voxels), closed with a ball
            of ``closing_radius``, without 26-connected components smaller than ``min_component_size``. A
            mapping (a postprocessing.json's content, ``tune``'s result) is read with :meth:`MaskRule.from_json`.

    Returns:
        An iterator of (first plane, mask block) pairs covering the volume in order.
    """
    from nnunet_vasculature.postprocess.components import remove_small_components
    from nnunet_vasculature.postprocess.morphology import closed_reader, level_for_fraction, level_histogram
    if not isinstance(rule, MaskRule):
        rule = MaskRule.from_json(rule)
    level = rule.level
    if rule.by_fraction:
        level = level_for_fraction(level_histogram(prob, BLOCK), rule.vessel_fraction)
    read = closed_reader(lambda a, b: np.asarray(prob[a:b]) >= level, prob.shape[0], rule.closing_radius)
    yield from remove_small_components(read, prob.shape[0], rule.min_component_size, BLOCK)


def best_option(scores: dict[int, float]) -> int:
    """The option (0 = off) with the best score, the smallest on ties; 0 unless another strictly helps.

    Args:
        scores: score of each option, with the entry 0 for "off".

    Returns:
        The chosen option.
    """
    key = max(scores, key=lambda s: (scores[s], -s))
    return key if scores[key] > scores[0] else 0


def best_fraction(curves: Sequence[np.ndarray], hists: Sequence[np.ndarray]) -> tuple[float, float, list[int]]:
    """The foreground fraction whose per-volume levels give the best mean score; every fraction some volume
    reaches at some level is a candidate.

    Args:
        curves: each volume's score at the 256 levels.
        hists: each volume's histogram of uint8 levels (:func:`~.morphology.level_histogram`).

    Returns:
        (fraction, its mean score, the level of each volume for it).
    """
    from nnunet_vasculature.postprocess.morphology import fraction_at_levels, level_for_fraction
    fracs = [fraction_at_levels(h) for h in hists]
    candidates = np.unique(np.concatenate([f[1:] for f in fracs]))
    candidates = candidates[candidates > 0]
    if not len(candidates):
        return 0.0, float(np.mean([c[255] for c in curves])), [255] * len(curves)
    score = np.zeros(len(candidates))
    for c, f in zip(curves, fracs):
        # level for each candidate: the highest level whose fraction is >= the candidate (f is non-increasing)
        level = np.searchsorted(-f[1:], -candidates, side="right")
        score += c[np.clip(level, 1, 255)]
    i = int(np.argmax(score))
    best = float(candidates[i])
    return best, float(score[i] / len(curves)), [level_for_fraction(h, best) for h in hists]


def option_scores(prob: ZSliceable, labels: ZSliceable, level: int, sizes: Sequence[int], closing: int,
                  scorer: Callable[[tuple[int, ...]], object], workers: int = WORKERS) -> np.ndarray:
    """The score of a volume thresholded at ``level`` (and closed) for each minimum component size, in one pass.

    Args:
        prob: uint8 probability levels (z, y, x).
        labels: the truth, same shape.
        level: the threshold level.
        sizes: minimum 26-connected component sizes (0: none removed).
        closing: closing radius in voxels (0: none).
        scorer: makes the competition's accumulator for a plane shape (``add(pred, gt)``, ``score(empty)``).
        workers: threads (blocks labelled at once; the sizes' scores of a block added at once; the labels read
            one block ahead).

    Returns:
        One score per size (0.0 when both masks are empty).
    """
    from nnunet_vasculature.postprocess.components import StreamingComponents
    from nnunet_vasculature.postprocess.morphology import closed_reader
    read = closed_reader(lambda a, b: np.asarray(prob[a:b]) >= level, prob.shape[0], closing)
    comps = StreamingComponents(read, prob.shape[0], BLOCK, workers)
    scorers = [scorer(tuple(prob.shape[1:])) for _ in sizes]
    starts = list(range(0, prob.shape[0], BLOCK))
    with ThreadPoolExecutor(max(2, workers)) as pool:
        truth = read_ahead(pool, lambda z: np.asarray(labels[z:z + BLOCK]), starts)
        for (z0, blocks), gt in zip(comps.filtered_blocks(list(sizes)), truth):
            # each size's accumulator is its own: they take the block at once
            list((pool.map if workers > 1 else map)(lambda one, m: one.add(m, gt), scorers, blocks))
    return np.array([one.score(0.0) for one in scorers])


def read_ahead(pool: ThreadPoolExecutor, read: Callable[[int], np.ndarray], starts: Sequence[int]) -> Iterator:
    """``read(z)`` for each z of ``starts`` in order, the next one being read on ``pool`` meanwhile (one ahead).

    Args:
        pool: the thread pool.
        read: reads the block at a start.
        starts: the starts.

    Returns:
        An iterator of the blocks.
    """
    future = pool.submit(read, starts[0]) if len(starts) else None
    for following in [*starts[1:], None]:
        block = future.result()
        future = None if following is None else pool.submit(read, following)
        yield block


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def level_edge_warning(level: int, what: str = "threshold") -> str | None:
    """A warning when a tuned uint8 level sits at the low or high end of 0..255, else None.

    Args:
        level: the tuned uint8 level.
        what: how the message names it.

    Returns:
        The message, or None.
    """
    if level <= EDGE_LEVELS:
        return (f"the tuned {what} {level / 255:.3f} (u8 {level}) is at the low end of the 256 levels: the model "
                f"is likely under-trained (few confident voxels); train longer before trusting it")
    if level >= 255 - EDGE_LEVELS:
        return (f"the tuned {what} {level / 255:.3f} (u8 {level}) is at the high end of the 256 levels: the model "
                f"over-predicts foreground; check the labels and the training")
    return None


def grid_edge_warning(name: str, values: Sequence[float], chosen: float, low_edge_ok: bool = False) -> str | None:
    """A warning when ``chosen`` is the smallest or largest of at least two grid ``values``, else None.

    Args:
        name: the flag of the grid (``--thresholds``).
        values: the values tried.
        chosen: the best of them.
        low_edge_ok: the smallest value is a natural floor (0 = off), not an edge worth a warning.

    Returns:
        The message, or None.
    """
    values = sorted(set(values))
    if len(values) < 2:
        return None
    if chosen == values[-1] or (chosen == values[0] and not low_edge_ok):
        side = "largest" if chosen == values[-1] else "smallest"
        return (f"the best {name} {chosen:g} is the {side} value tried ({', '.join(f'{v:g}' for v in values)}): "
                f"the optimum may lie beyond it; try a wider {name} grid")
    return None


def plot_curves(curves: dict[str, Sequence[float]], mean: Sequence[float], chosen_level: int, ylabel: str,
                out_png: Path, notes: Sequence[str] = ()) -> None:
    """Score versus uint8 threshold level: one thin line per case, the mean in black (one case: its curve, the
    mean, drawn once), the tuned and the 0.5 thresholds marked (all or nothing on ``out_png``).

    Args:
        curves: score at each of the 256 levels, per case (kidney, slide).
        mean: the mean curve.
        chosen_level: the tuned level.
        ylabel: what the score is.
        out_png: the PNG to write.
        notes: extra lines for the legend (e.g. the score after component removal).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(256) / 255.0
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(curves) == 1:      # the one case's curve is the mean: one line, named for both
        ax.plot(x, mean, "k", lw=2, label=f"{next(iter(curves))} (the only case: the mean)")
    else:
        for name, curve in curves.items():
            ax.plot(x, curve, lw=1, alpha=0.7, label=name)
        ax.plot(x, mean, "k", lw=2, label="mean")
    ax.axvline(chosen_level / 255, color="tab:red", ls="--", label=f"tuned {chosen_level / 255:.3f}: "
                                                                   f"{mean[chosen_level]:.4f}")
    ax.axvline(0.5, color="grey", ls=":", label=f"0.5: {mean[LEVEL_HALF]:.4f}")
    for note in notes:
        ax.plot([], [], " ", label=note)
    ax.set_xlabel("threshold (foreground probability)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:             # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value
