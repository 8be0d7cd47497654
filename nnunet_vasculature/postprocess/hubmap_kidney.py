"""HuBMAP Hacking the Kidney post-processing: ``score``, ``tune``, ``submit``, ``validate``, ``overlay hubmap-kidney``.

Metric: Dice 2|X∩Y| / (|X| + |Y|) per slide, 1 when both masks are empty, mean over slides. It is
computed on the runs of the two RLEs (interval intersection), so no mask is decoded. Probability
stores are ``predict hubmap-kidney``'s (H, W) uint8 zarr arrays; they are read in vertical strips. A slide is
seen by the shared code (``tune.masks``, ``components``) as a volume of shape (W, H, 1) whose
"slices" are columns: z-blocks are then vertical strips, 26-connectivity is 8-connectivity in the
slide, and the post-processed strips come out in the order of the column-major RLE.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.rle import ColumnStripEncoder, column_major_regions, rle_runs
from nnunet_vasculature.io.store import SLIDE_OUTPUT, add_foreign_flag
from nnunet_vasculature.io.tables import read_table
from nnunet_vasculature.postprocess.files import check_outputs, check_sample_ids, refuse_other_competition, sample_order
from nnunet_vasculature.postprocess.mask_rule import MaskRule
from nnunet_vasculature.postprocess.tune import (
    LEVEL_HALF,
    best_option,
    grid_edge_warning,
    import_mask_packages,
    level_edge_warning,
    masks,
    non_negative_int,
    plot_curves,
    read_mask_rule,
    warn,
    write_postprocessing,
)

COMPETITION = "hubmap-kidney"
CC_PIXELS = [256, 1024, 4096, 16384]     # full-resolution pixels (a glomerulus is ~10^4-10^5)
STRIP = 1024
TRUTH_COLUMNS = ("encoding", "predicted", "expected")   # train.csv, a submission, an old solution


class ColumnView:
    """A (H, W) array seen as a (W, H, 1) volume: ``view[a:b]`` = columns a..b-1, read in cached strips."""

    def __init__(self, arr: object, strip: int = STRIP):
        self.arr, self.strip = arr, strip
        h, w = arr.shape
        self.shape = (w, h, 1)
        self._c0, self._cache = -1, None

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b = sl.start or 0, min(sl.stop, self.shape[0])
        if self._cache is None or a < self._c0 or b > self._c0 + self._cache.shape[1]:
            self._c0 = a
            self._cache = np.asarray(self.arr[:, a:max(b, a + self.strip)])
        return self._cache[:, a - self._c0:b - self._c0].T[..., None]


def _merged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint [start, end) intervals of runs (overlapping or touching runs merged)."""
    keep = lengths > 0
    s, e = starts[keep], starts[keep] + lengths[keep]
    if len(s) == 0:
        return s, e
    o = np.argsort(s, kind="stable")
    s, e = s[o], np.maximum.accumulate(e[o])
    new = np.concatenate(([True], s[1:] > e[:-1]))
    idx = np.flatnonzero(new)
    return s[idx], np.maximum.reduceat(e, idx)


def dice_runs(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Dice of two masks given as (starts, lengths) runs in the same pixel order; 1 when both are empty."""
    sa, ea = _merged(*a)
    sb, eb = _merged(*b)
    na, nb = int((ea - sa).sum()), int((eb - sb).sum())
    if na + nb == 0:
        return 1.0
    lo = np.searchsorted(eb, sa, side="right")        # first B interval ending after a's start
    hi = np.searchsorted(sb, ea, side="left")         # B intervals starting before a's end
    cnt = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(len(sa)), cnt)
    ib = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    inter = int(np.maximum(np.minimum(ea[ia], eb[ib]) - np.maximum(sa[ia], sb[ib]), 0).sum())
    return 2.0 * inter / (na + nb)


def _runs(rle: str, where: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
        s, n = rle_runs(rle)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    if size is not None and len(s) and int((s + n).max()) > size:
        raise UserError(f"{where}: RLE runs past the image (pixel {int((s + n).max())} of {size})")
    return s, n


def _truth_column(rows: list[dict], path: Path) -> str:
    column = next((c for c in TRUTH_COLUMNS if c in rows[0]), None) if rows else None
    if column is None:
        raise UserError(f"{path}: expected an encoding (or predicted/expected) column")
    return column


def score_csv(solution: Path, submission: Path) -> dict[str, float]:
    """Per-slide Dice of a submission (``id,predicted``) against a solution (``id,encoding[,width,height]``).

    A repeated id in either file is refused; each row's width and height (when given) bound its runs.

    Args:
        solution: the truth.
        submission: the prediction.

    Returns:
        Dice per slide id.
    """
    sol = read_table(solution, ("id",), competition=COMPETITION)
    column = _truth_column(sol, solution)
    sub = {r["id"]: r["predicted"] for r in read_table(submission, ("id", "predicted"), competition=COMPETITION)}
    scores = {}
    for line, r in enumerate(sol, start=2):
        if r["id"] not in sub:
            raise UserError(f"{submission}: id {r['id']} of the solution is missing")
        try:
            size = int(r["width"]) * int(r["height"]) if r.get("width") and r.get("height") else None
        except ValueError:
            raise UserError(f"{solution}:{line}: width/height are not integers") from None
        scores[r["id"]] = dice_runs(_runs(r[column], f"{solution} (id {r['id']})", size),
                                    _runs(sub[r["id"]] or "", f"{submission} (id {r['id']})", size))
    return scores


def stores(paths: list) -> list[Path]:
    """``predict hubmap-kidney`` stores: ``<id>.zarr`` paths, or an output folder of it holding them."""
    out = []
    for p in map(Path, paths):
        if p.suffix == ".zarr":
            out.append(p)
        elif p.is_dir() and sorted(p.glob("*.zarr")):
            out += sorted(p.glob("*.zarr"))
        else:
            raise UserError(f"{p}: not a probability store of predict hubmap-kidney (<id>.zarr) or a folder of them")
    return out


def _open(store: Path, foreign_probabilities: bool = False) -> object:
    from nnunet_vasculature.io.store import open_slide_probabilities
    return open_slide_probabilities(store, foreign_probabilities)


def read_truth(labels_csv: Path) -> dict[str, str]:
    """{slide id: column-major RLE} of ``train.csv`` (a second row for a slide is refused)."""
    rows = read_table(labels_csv, ("id",), competition=COMPETITION)
    column = _truth_column(rows, labels_csv)
    return {r["id"]: r[column] or "" for r in rows}


def determine(slide_stores: list[Path], labels_csv: Path, cc_sizes: list[int], foreign_probabilities: bool = False
              ) -> dict:
    """Best uint8 threshold by mean Dice over held-out slides (all 256 at once from histograms), then
    whether removing components smaller than some size helps (kept only if it raises the mean).

    Args:
        slide_stores: ``predict hubmap-kidney`` stores of held-out slides.
        labels_csv: ``train.csv`` with their masks.
        cc_sizes: minimum component sizes (full-resolution pixels) to try.
        foreign_probabilities: read stores without predict's record (``--foreign_probabilities``, as
            :func:`~nnunet_vasculature.io.store.open_slide_probabilities`).

    Returns:
        The decision and its evidence (postprocessing.json without its competition record).
    """
    truth = read_truth(labels_csv)
    arrays = [_open(store, foreign_probabilities) for store in slide_stores]     # every store checked first
    curves, names, gts = [], [], []
    for store, arr in zip(slide_stores, arrays):
        sid = store.stem
        if sid not in truth:
            raise UserError(f"{labels_csv}: no mask for slide {sid} ({store})")
        h, w = arr.shape
        try:
            gt = column_major_regions(truth[sid], h, w)
        except ValueError as e:
            raise UserError(f"{labels_csv} (id {sid}): {e}") from None
        h_all, h_gt, n_gt = np.zeros(256), np.zeros(256), 0
        for x in tqdm(range(0, w, STRIP), desc=f"tune {sid}", unit="strip", leave=False):
            p, g = np.asarray(arr[:, x:x + STRIP]), gt(0, h, x, min(w, x + STRIP)).astype(bool)
            h_all += np.bincount(p.ravel(), minlength=256)
            h_gt += np.bincount(p[g], minlength=256)
            n_gt += int(g.sum())
        pred, inter = np.cumsum(h_all[::-1])[::-1], np.cumsum(h_gt[::-1])[::-1]
        denom = pred + n_gt
        curves.append(np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0))
        names.append(sid)
        gts.append((arr, gt))
    mean = np.mean(curves, axis=0)
    best = int(np.argmax(mean))
    cc_scores = {0: float(mean[best])}
    for size in cc_sizes:
        cc_scores[int(size)] = float(np.mean([_dice_without_small(arr, gt, best, size) for arr, gt in gts]))
    min_size = best_option(cc_scores)
    rule = MaskRule(COMPETITION, best, int(min_size))
    return {
        **{k: v for k, v in rule.to_json().items() if k != "competition"},
        "mean_dice": cc_scores[min_size],
        "mean_dice_at_0.5": float(mean[LEVEL_HALF]),
        "slides": names,
        "per_slide_at_threshold": {k: float(c[best]) for k, c in zip(names, curves)},
        "per_slide_at_0.5": {k: float(c[LEVEL_HALF]) for k, c in zip(names, curves)},
        "component_removal_scores": {str(k): v for k, v in cc_scores.items()},
        "curve_u8_levels": "entry k: mean Dice of probability_u8 >= k",
        "mean_curve": [float(x) for x in mean],
        "per_slide_curves": {k: [float(x) for x in c] for k, c in zip(names, curves)},
    }


def _dice_without_small(arr: object, gt: object, level: int, size: int) -> float:
    """Dice of a slide thresholded at ``level`` without its 8-connected components smaller than ``size``."""
    from nnunet_vasculature.postprocess.components import StreamingComponents
    view = ColumnView(arr)
    comps = StreamingComponents(lambda a, b: view[a:b] >= level, view.shape[0], STRIP)
    inter = npred = ngt = 0
    for z0, (m,) in comps.filtered_blocks([size]):
        m = m[..., 0].T
        g = gt(0, m.shape[0], z0, z0 + m.shape[1]).astype(bool)
        inter, npred, ngt = inter + int((m & g).sum()), npred + int(m.sum()), ngt + int(g.sum())
    return 1.0 if npred + ngt == 0 else 2 * inter / (npred + ngt)


def load_postprocessing(path: Path | str) -> MaskRule:
    """The threshold and minimum component size (pixels) of a ``tune hubmap-kidney`` file (another
    competition's file is refused; files with ``min_component_voxels`` read too).

    Args:
        path: the file.

    Returns:
        The rule :func:`~.tune.masks` applies.
    """
    return read_mask_rule(path, COMPETITION)


def slide_rle(arr: object, pp: MaskRule) -> str:
    """Column-major RLE of a store's post-processed mask, strip by strip (``tune.masks`` on the column view).

    Args:
        arr: the store's array, as :func:`_open` gave it.
        pp: the post-processing rule.

    Returns:
        The RLE (empty for an empty mask).
    """
    enc = ColumnStripEncoder(arr.shape[0], empty="")
    for _, m in masks(ColumnView(arr), pp):
        enc.add(m[..., 0].T)
    return enc.finish()


def submit(slide_stores: list[Path], pp_path: Path, out_csv: Path, sample: Path | None,
           foreign_probabilities: bool = False) -> Path:
    """``id,predicted`` per slide, in the sample's order when given.

    ``foreign_probabilities``: read stores without predict's record (as
    :func:`~nnunet_vasculature.io.store.open_slide_probabilities`).

    Returns:
        ``out_csv``.
    """
    pp = load_postprocessing(pp_path)
    order = [r["id"] for r in read_table(sample, ("id", "predicted"), competition=COMPETITION)] if sample else None
    if len({s.stem for s in slide_stores}) != len(slide_stores):
        raise UserError(f"{slide_stores[0].parent}: two stores of one slide among the inputs")
    order = sample_order([s.stem for s in slide_stores], order, sample)
    arrays = {s.stem: _open(s, foreign_probabilities) for s in slide_stores}     # every store checked first
    rows = {sid: slide_rle(arr, pp) for sid, arr in tqdm(arrays.items(), desc="submit", unit="slide")}
    with atomic_file(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("id", "predicted"))
        w.writerows((i, rows[i]) for i in order)
    print(f"wrote {out_csv} ({len(order)} slides)")
    return Path(out_csv)


def validate(sub_csv: Path, sample: Path, images: Path | None = None) -> int:
    """Refuse repeated/missing/unknown ids, malformed RLE and (with ``images``) runs past the slide.

    Returns:
        The number of rows.
    """
    from nnunet_vasculature.io.slide import INFO_CSV, read_info
    rows = read_table(sub_csv, ("id", "predicted"), competition=COMPETITION)
    expected = [r["id"] for r in read_table(sample, ("id",), competition=COMPETITION)]
    sizes = {}
    if images is not None:
        info_dir = next((d for d in (Path(images), Path(images).parent) if (d / INFO_CSV).is_file()), None)
        if info_dir is None:
            raise UserError(f"{images}: no {INFO_CSV} here or in the parent folder")
        sizes = {k: v["width"] * v["height"] for k, v in read_info(info_dir).items()}
    for line, r in enumerate(rows, start=2):
        _runs(r["predicted"] or "", f"{sub_csv}:{line}: id {r['id']}", sizes.get(r["id"]))
    check_sample_ids(sub_csv, (r["id"] for r in rows), expected)
    print(f"{sub_csv}: {len(rows)} rows, valid" + ("" if sizes else
          "; runs were not checked against slide sizes (pass --images KAGGLE/test)"))
    return len(rows)


def draw_overlay(slide: Path, truth_csv: Path, submission: Path, png: Path, slide_id: str | None = None,
                 side: int = 512) -> None:
    """Thumbnail | truth | prediction against truth (green truth only, magenta prediction only, yellow both) of
    one slide, titled with its Dice.

    Args:
        slide: the slide TIFF.
        truth_csv: ``train.csv`` or ``solution.csv`` holding its mask.
        submission: the prediction (``id,predicted``).
        png: the picture to write.
        slide_id: the id in the CSVs (default: the TIFF's name).
        side: the thumbnail's longer side is at most about this many pixels.
    """
    from nnunet_vasculature.io.rle import rle_decode
    from nnunet_vasculature.io.slide import Slide
    from nnunet_vasculature.postprocess.overlay import save_panels, tint
    sid = slide_id or Path(slide).stem
    truth = read_truth(truth_csv)
    pred = {r["id"]: r["predicted"] for r in read_table(submission, ("id", "predicted"), competition=COMPETITION)}
    for table, rows in ((truth_csv, truth), (submission, pred)):
        if sid not in rows:
            raise UserError(f"{table}: no row for slide {sid}")
    with Slide(slide) as s:
        h, w = s.shape
        factor = max(1, max(h, w) // side)
        thumb = s.thumbnail(factor)
    score = dice_runs(_runs(truth[sid], f"{truth_csv} (id {sid})", h * w),
                      _runs(pred[sid] or "", f"{submission} (id {sid})", h * w))
    gt, pr = (rle_decode(rle or "", (h, w), order="F")[::factor, ::factor].astype(bool) for rle in (truth[sid],
                                                                                                  pred[sid]))
    save_panels([[(f"slide {sid} (1/{factor} scale)", thumb), ("truth", tint(thumb, gt, None)),
                  (f"prediction: Dice {score:.4f}", tint(thumb, gt, pr))]],
                f"{sid}: {Path(submission).name} against {Path(truth_csv).name}", png)


# ---------------------------------------------------------------------------------------------- command line
def _run_score(a: argparse.Namespace) -> None:
    refuse_other_competition([a.solution, a.submission], COMPETITION, "score")
    scores = score_csv(a.solution, a.submission)
    for k, v in scores.items():
        print(f"{k:<20s} {v:.6f}")
    print(f"{'mean':<20s} {np.mean(list(scores.values())):.6f}")


def _run_tune(a: argparse.Namespace) -> None:
    import_mask_packages()
    refuse_other_competition([*a.input, a.labels], COMPETITION, "tune")
    check_outputs([("-i", p) for p in a.input] + [("--labels", a.labels)], [("-o", a.output), ("--plot", a.plot)])
    sizes = [] if a.no_cc else a.cc_sizes
    res = determine(stores(a.input), a.labels, sizes, a.foreign_probabilities)
    rule = MaskRule.from_json(write_postprocessing(res, a.output, COMPETITION), str(a.output))
    for k in res["slides"]:
        print(f"{k:<20s} @0.5 {res['per_slide_at_0.5'][k]:.4f}  @best {res['per_slide_at_threshold'][k]:.4f}")
    print(f"threshold {rule.threshold:.4f} (u8 {rule.level}), min component "
          f"{rule.min_component_size} px, mean Dice {res['mean_dice']:.4f} (at 0.5: {res['mean_dice_at_0.5']:.4f})")
    for message in (level_edge_warning(rule.level),
                    grid_edge_warning("--cc_sizes", [0, *sizes], rule.min_component_size, True)):
        if message:
            warn(message)
    if a.plot:
        cc = rule.min_component_size
        plot_curves(res["per_slide_curves"], res["mean_curve"], rule.level, "Dice", a.plot,
                    [f"{res['mean_dice']:.4f} without components < {cc} px"] if cc else [])
    print(f"wrote {a.output}")


def _run_submit(a: argparse.Namespace) -> None:
    import_mask_packages()
    refuse_other_competition([*a.input, a.sample], COMPETITION, "submit")
    check_outputs([("-i", p) for p in a.input] + [("-pp", a.pp), ("--sample", a.sample)], [("-o", a.output)])
    submit(stores(a.input), a.pp, a.output, a.sample, a.foreign_probabilities)


def _run_validate(a: argparse.Namespace) -> None:
    refuse_other_competition([a.submission, a.sample], COMPETITION, "validate")
    validate(a.submission, a.sample, a.images)


def _run_overlay(a: argparse.Namespace) -> None:
    refuse_other_competition([a.truth, a.submission], COMPETITION, "overlay")
    check_outputs([("--slide", a.slide), ("--truth", a.truth), ("--submission", a.submission)], [("-o", a.output)])
    draw_overlay(a.slide, a.truth, a.submission, a.output, a.id)
    print(f"wrote {a.output}")


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Register ``hubmap-kidney`` under score, tune, submit, validate and overlay (those of ``groups``)."""
    if "score" in groups:
        s = groups["score"].add_parser(COMPETITION, help="Dice per slide and mean")
        s.add_argument("--solution", type=Path, required=True, help="solution CSV (id,encoding[,width,height])")
        s.add_argument("--submission", type=Path, required=True, help="submission CSV (id,predicted)")
        s.set_defaults(func=_run_score)
    if "tune" in groups:
        t = groups["tune"].add_parser(COMPETITION, help="best threshold (and component removal) by mean Dice")
        t.add_argument("-i", dest="input", nargs="+", required=True,
                       help="stores of predict hubmap-kidney (<id>.zarr) or their folder, of held-out slides")
        t.add_argument("--labels", type=Path, required=True, help="train.csv (id,encoding)")
        t.add_argument("-o", dest="output", type=Path, required=True, help="postprocessing.json to write")
        t.add_argument("--plot", type=Path, help="write the Dice vs threshold curve (PNG)")
        t.add_argument("--cc_sizes", nargs="+", type=non_negative_int, default=list(CC_PIXELS),
                       help=f"component sizes to try (full-resolution pixels; default {CC_PIXELS})")
        t.add_argument("--no_cc", action="store_true", help="do not try removing small components")
        add_foreign_flag(t, SLIDE_OUTPUT)
        t.set_defaults(func=_run_tune)
    if "submit" in groups:
        sm = groups["submit"].add_parser(COMPETITION, help="write the submission CSV (id,predicted)")
        sm.add_argument("-i", dest="input", nargs="+", required=True,
                        help="stores of predict hubmap-kidney (<id>.zarr) or their folder")
        sm.add_argument("-pp", type=Path, required=True, help="postprocessing.json from tune hubmap-kidney")
        sm.add_argument("-o", dest="output", type=Path, required=True, help="submission CSV to write")
        sm.add_argument("--sample", type=Path, help="sample_submission.csv: row order and the ids that must be present")
        add_foreign_flag(sm, SLIDE_OUTPUT)
        sm.set_defaults(func=_run_submit)
    if "validate" in groups:
        v = groups["validate"].add_parser(COMPETITION, help="check a submission against the sample submission")
        v.add_argument("submission", type=Path)
        v.add_argument("--sample", type=Path, required=True)
        v.add_argument("--images", type=Path, help="Kaggle test/ folder (HuBMAP-20-dataset_information.csv in "
                                                   "it or its parent): check runs against slide sizes")
        v.set_defaults(func=_run_validate)
    if "overlay" in groups:
        o = groups["overlay"].add_parser(COMPETITION, help="draw a slide's prediction against its mask (PNG)")
        o.add_argument("--slide", type=Path, required=True, help="the slide TIFF")
        o.add_argument("--truth", type=Path, required=True, help="train.csv or solution.csv with its mask")
        o.add_argument("--submission", type=Path, required=True, help="the prediction (id,predicted)")
        o.add_argument("--id", help="the slide's id in the CSVs (default: the TIFF's name)")
        o.add_argument("-o", dest="output", type=Path, required=True, help="PNG to write")
        o.set_defaults(func=_run_overlay)
