"""Pictures of a prediction against the truth, shared by the three competitions' ``overlay`` commands: one
colour code (truth only green, prediction only magenta, both yellow) and titled panels in one PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_vasculature.errors import atomic_file

TRUTH_ONLY = np.array([0, 200, 0], np.float32)          # missed (false negative)
PREDICTION_ONLY = np.array([230, 0, 200], np.float32)   # false positive
OVERLAP = np.array([255, 220, 0], np.float32)           # hit
LEGEND = "green: truth only, magenta: prediction only, yellow: both"


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A grey (H, W) or colour (H, W, 3) image of any dtype as uint8 RGB, grey stretched to its 1-99 % range.

    Args:
        image: the picture.

    Returns:
        (H, W, 3) uint8.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        return image[..., :3].astype(np.uint8) if image.dtype == np.uint8 else \
            np.clip(image[..., :3], 0, 255).astype(np.uint8)
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0, 1)
    grey = np.clip((image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)


def tint(rgb: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None, alpha: float = 0.55) -> np.ndarray:
    """``rgb`` with truth-only, prediction-only and overlapping pixels tinted in the three colours.

    Args:
        rgb: (H, W, 3) uint8.
        truth: (H, W) bool or None (then only the prediction is drawn, as "prediction only").
        prediction: (H, W) bool or None (then only the truth is drawn, as "truth only").
        alpha: weight of the colour.

    Returns:
        (H, W, 3) uint8.
    """
    out = rgb.astype(np.float32)
    truth = np.zeros(rgb.shape[:2], bool) if truth is None else np.asarray(truth, bool)
    prediction = np.zeros(rgb.shape[:2], bool) if prediction is None else np.asarray(prediction, bool)
    for where, colour in ((truth & ~prediction, TRUTH_ONLY), (prediction & ~truth, PREDICTION_ONLY),
                          (truth & prediction, OVERLAP)):
        out[where] = (1 - alpha) * out[where] + alpha * colour
    return np.clip(out, 0, 255).astype(np.uint8)


def dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    """2 |T & P| / (|T| + |P|) of two masks; 1 when both are empty.

    Args:
        truth: bool mask.
        prediction: bool mask of the same shape.

    Returns:
        The Dice coefficient.
    """
    total = int(truth.sum()) + int(prediction.sum())
    return 1.0 if total == 0 else 2.0 * int((truth & prediction).sum()) / total


PANEL_INCHES = 4.0
TITLE_POINTS, FIGURE_TITLE_POINTS, FOOTNOTE_POINTS = 9, 10, 8


def wrap_to_width(text: str, width: float, measure: Callable[[str], float]) -> str:
    """``text`` broken at spaces into lines no wider than ``width`` (a word wider than it keeps its own line).

    Args:
        text: the text.
        width: the widest line allowed, in the unit ``measure`` returns.
        measure: the width of one line of text.

    Returns:
        The text with newlines.
    """
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and measure(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(lines)


def _text_inches(points: float, lines: int) -> float:
    """Height of ``lines`` lines of ``points``-point text (matplotlib's line spacing 1.2), in inches."""
    return lines * points * 1.2 / 72


def save_panels(rows: Sequence[Sequence[tuple[str, np.ndarray]]], title: str, png: Path | str,
                footnote: str = LEGEND) -> None:
    """Write a grid of titled RGB panels (rows of (panel title, image)) as one PNG, all or nothing. Titles
    wider than their panel (or the figure) are wrapped, and each row gets the height its titles need, so no
    title leaves the picture or covers the row above.

    Args:
        rows: the panels, row by row.
        title: the figure title (what is shown and its score).
        png: the PNG to write.
        footnote: a line under the panels (the colour code).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    width = PANEL_INCHES * n_cols
    fig = plt.figure(figsize=(width, PANEL_INCHES))
    renderer = fig.canvas.get_renderer()
    probe = fig.text(0, 0, "")

    def wrapped(text: str, points: float, inches: float) -> str:
        probe.set_fontsize(points)

        def measure(line: str) -> float:
            probe.set_text(line)
            return probe.get_window_extent(renderer).width / fig.dpi
        return wrap_to_width(text, inches, measure)

    titles = [[wrapped(name, TITLE_POINTS, 0.9 * PANEL_INCHES) for name, _ in row] for row in rows]
    title, footnote = (wrapped(text, points, 0.95 * width) for text, points in
                       ((title, FIGURE_TITLE_POINTS), (footnote, FOOTNOTE_POINTS)))
    probe.remove()
    top = _text_inches(FIGURE_TITLE_POINTS, title.count("\n") + 1) + 0.1
    bottom = _text_inches(FOOTNOTE_POINTS, footnote.count("\n") + 1) + 0.1
    row_inches = [max(PANEL_INCHES * image.shape[0] / max(image.shape[1], 1) for _, image in row)
                  + _text_inches(TITLE_POINTS, max(t.count("\n") + 1 for t in row_titles)) + 0.25
                  for row, row_titles in zip(rows, titles)]
    height = sum(row_inches) + top + bottom
    fig.set_size_inches(width, height)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"height_ratios": row_inches})
    for ax_row, row, row_titles in zip(axes, rows, titles):
        for ax, (_, image), name in zip(ax_row, row, row_titles):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(name, fontsize=TITLE_POINTS)
        for ax in ax_row:
            ax.axis("off")
    fig.suptitle(title, fontsize=FIGURE_TITLE_POINTS, y=1 - 0.05 / height, va="top")
    fig.text(0.5, 0.04 / height, footnote, ha="center", va="bottom", fontsize=FOOTNOTE_POINTS)
    fig.tight_layout(rect=(0, bottom / height, 1, 1 - top / height))
    with atomic_file(Path(png)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def draw_slices(files: Sequence[Path], truth: object, predicted: dict[int, np.ndarray], rule: str, title: str,
                png: Path | str) -> None:
    """Rows of image | truth | prediction against truth for the slices ``predicted`` holds, each with its Dice.

    Args:
        files: the image slice files of the volume.
        truth: the label volume, read ``truth[z:z + 1]``.
        predicted: the predicted (H, W) mask of each shown slice number.
        rule: how the prediction was made (for the panel title).
        title: the figure title.
        png: the picture to write.
    """
    from nnunet_vasculature.io.slices import read_slice
    rows = []
    for z, prediction in sorted(predicted.items()):
        gt, prediction = np.asarray(truth[z:z + 1])[0].astype(bool), np.asarray(prediction, bool)
        rgb = as_rgb(read_slice(files[z]))
        rows.append([(f"image (slice {z})", rgb), ("truth", tint(rgb, gt, None)),
                     (f"prediction ({rule}): Dice {dice(gt, prediction):.3f}", tint(rgb, gt, prediction))])
    save_panels(rows, title, png)
