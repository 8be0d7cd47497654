"""score/tune/submit/validate for HuBMAP Hacking the Kidney (per-slide Dice, column-major RLE).

Metric: Dice 2|X∩Y| / (|X| + |Y|) per slide, 1 when both masks are empty, mean over slides. It is
computed on the runs of the two RLEs (interval intersection), so no mask is decoded. Probability
stores are ``predict-slide``'s (H, W) uint8 zarr arrays; they are read in vertical strips. A slide is
seen by the shared SenNet code (``tune.masks``, ``components``) as a volume of shape (W, H, 1) whose
"slices" are columns: z-blocks are then vertical strips, 26-connectivity is 8-connectivity in the
slide, and the post-processed strips come out in the order of the column-major RLE.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_file

SENNET_CC_DEFAULT = [8, 32, 128, 512]
CC_PIXELS = [256, 1024, 4096, 16384]     # full-resolution pixels (a glomerulus is ~10^4-10^5)
STRIP = 1024


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
    from nnunet_vasculature.io.rle import rle_runs
    try:
        s, n = rle_runs(rle)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    if size is not None and len(s) and int((s + n).max()) > size:
        raise UserError(f"{where}: RLE runs past the image (pixel {int((s + n).max())} of {size})")
    return s, n


def score_csv(solution: Path, submission: Path) -> dict[str, float]:
    """Per-slide Dice of a submission (``id,predicted``) against a solution (``id,encoding[,width,height]``)."""
    from nnunet_vasculature.io.rle import allow_long_csv_fields
    allow_long_csv_fields()
    from nnunet_vasculature.postprocess.submission import read_csv
    sol = read_csv(solution, ("id",))
    col = next((c for c in ("encoding", "predicted", "expected") if c in sol[0]), None) if sol else None
    if col is None:
        raise UserError(f"{solution}: expected an encoding (or predicted/expected) column")
    sub = {r["id"]: r["predicted"] for r in read_csv(submission, ("id", "predicted"))}
    scores = {}
    for r in sol:
        if r["id"] not in sub:
            raise UserError(f"{submission}: id {r['id']} of the solution is missing")
        size = int(r["width"]) * int(r["height"]) if r.get("width") and r.get("height") else None
        scores[r["id"]] = dice_runs(_runs(r[col], f"{solution} (id {r['id']})", size),
                                    _runs(sub[r["id"]] or "", f"{submission} (id {r['id']})", size))
    return scores


def _stores(paths: list) -> list[Path]:
    """predict-slide stores: ``<id>.zarr`` paths, or a predict-slide output folder holding them."""
    out = []
    for p in map(Path, paths):
        if p.suffix == ".zarr":
            out.append(p)
        elif p.is_dir() and sorted(p.glob("*.zarr")):
            out += sorted(p.glob("*.zarr"))
        else:
            raise UserError(f"{p}: not a predict-slide probability store (<id>.zarr) or a folder of them")
    return out


def _open(store: Path) -> object:
    import zarr
    try:
        arr = zarr.open_array(str(store), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a bad store
        raise UserError(f"{store}: not a predict-slide probability store ({type(e).__name__})") from None
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise UserError(f"{store}: expected a (H, W) uint8 array, got {arr.shape} {arr.dtype}")
    return arr


def determine(stores: list[Path], labels_csv: Path, cc_sizes: list[int]) -> dict:
    """Best uint8 threshold by mean Dice over held-out slides (all 256 at once from histograms), then
    whether removing components smaller than some size helps (kept only if it raises the mean)."""
    from nnunet_vasculature.io.rle import allow_long_csv_fields
    allow_long_csv_fields()
    from tqdm import tqdm

    from nnunet_vasculature.io.rle import column_major_regions
    from nnunet_vasculature.postprocess.components import StreamingComponents
    from nnunet_vasculature.postprocess.submission import read_csv
    truth = {r["id"]: r["encoding"] for r in read_csv(labels_csv, ("id", "encoding"))}
    curves, names, gts = [], [], []
    for store in stores:
        arr, sid = _open(store), store.stem
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
        dices = []
        for arr, gt in gts:
            view = ColumnView(arr)
            comps = StreamingComponents(lambda a, b, v=view: v[a:b] >= best, view.shape[0], STRIP)
            inter = npred = ngt = 0
            for z0, (m,) in comps.filtered_blocks([size]):
                m = m[..., 0].T
                g = gt(0, m.shape[0], z0, z0 + m.shape[1]).astype(bool)
                inter, npred, ngt = inter + int((m & g).sum()), npred + int(m.sum()), ngt + int(g.sum())
            dices.append(1.0 if npred + ngt == 0 else 2 * inter / (npred + ngt))
        cc_scores[int(size)] = float(np.mean(dices))
    min_size = max(cc_scores, key=lambda s: (cc_scores[s], -s))
    if cc_scores[min_size] <= cc_scores[0]:
        min_size = 0
    return {
        "competition": "hubmap-kidney",
        "threshold": best / 255.0,
        "threshold_u8": best,
        "min_component_voxels": int(min_size),
        "min_component_pixels": int(min_size),
        "mean_dice": cc_scores[min_size],
        "mean_dice_at_0.5": float(mean[128]),
        "slides": names,
        "per_slide_at_threshold": {k: float(c[best]) for k, c in zip(names, curves)},
        "per_slide_at_0.5": {k: float(c[128]) for k, c in zip(names, curves)},
        "component_removal_scores": {str(k): v for k, v in cc_scores.items()},
        "curve_u8_levels": "entry k: mean Dice of probability_u8 >= k",
        "mean_curve": [float(x) for x in mean],
    }


def slide_rle(store: Path, pp: dict) -> str:
    """Column-major RLE of a store's post-processed mask, strip by strip (``tune.masks`` on the column view)."""
    from nnunet_vasculature.io.rle import ColumnStripEncoder
    from nnunet_vasculature.postprocess.tune import masks
    arr = _open(store)
    enc = ColumnStripEncoder(arr.shape[0], empty="")
    for _, m in masks(ColumnView(arr), pp):
        enc.add(m[..., 0].T)
    return enc.finish()


def submit(stores: list[Path], pp_path: Path, out_csv: Path, sample: Path | None) -> Path:
    from tqdm import tqdm

    from nnunet_vasculature.postprocess.submission import read_csv
    from nnunet_vasculature.postprocess.tune import load_postprocessing
    pp = load_postprocessing(pp_path)
    rows = {s.stem: slide_rle(s, pp) for s in tqdm(stores, desc="submit", unit="slide")}
    order = list(rows)
    if sample is not None:
        order = [r["id"] for r in read_csv(sample, ("id", "predicted"))]
        missing = [i for i in order if i not in rows]
        if missing:
            raise UserError(f"{sample}: id {missing[0]} has no prediction ({len(missing)} ids missing)")
        extra = [i for i in rows if i not in set(order)]
        if extra:
            raise UserError(f"{sample}: predicted slide {extra[0]} is not in the sample submission")
    with atomic_file(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("id", "predicted"))
        w.writerows((i, rows[i]) for i in order)
    print(f"wrote {out_csv} ({len(order)} slides)")
    return Path(out_csv)


def validate(sub_csv: Path, sample: Path, images: Path | None = None) -> int:
    from nnunet_vasculature.io.rle import allow_long_csv_fields
    allow_long_csv_fields()
    from nnunet_vasculature.io.slide import INFO_CSV, read_info
    from nnunet_vasculature.postprocess.submission import read_csv
    rows = read_csv(sub_csv, ("id", "predicted"))
    expected = [r["id"] for r in read_csv(sample, ("id",))]
    sizes = {}
    if images is not None:
        info_dir = next((d for d in (Path(images), Path(images).parent) if (d / INFO_CSV).is_file()), None)
        if info_dir is None:
            raise UserError(f"{images}: no {INFO_CSV} here or in the parent folder")
        sizes = {k: v["width"] * v["height"] for k, v in read_info(info_dir).items()}
    seen = set()
    for n, r in enumerate(rows, start=2):
        if r["id"] in seen:
            raise UserError(f"{sub_csv}:{n}: duplicate id {r['id']}")
        seen.add(r["id"])
        _runs(r["predicted"] or "", f"{sub_csv}:{n}: id {r['id']}", sizes.get(r["id"]))
    missing = [i for i in expected if i not in seen]
    if missing:
        raise UserError(f"{sub_csv}: id {missing[0]} of the sample submission is missing ({len(missing)} missing)")
    unknown = [i for i in seen if i not in set(expected)]
    if unknown:
        raise UserError(f"{sub_csv}: id {unknown[0]} is not in the sample submission")
    print(f"{sub_csv}: {len(rows)} rows, valid" + ("" if sizes else
          "; runs were not checked against slide sizes (pass --images KAGGLE/test)"))
    return len(rows)


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Add this competition's own flags to the shared ``command`` parser (score, tune, submit, validate).

    None are needed: score uses --solution/--submission, tune -i (stores or a predict-slide folder)
    --labels (train.csv) -o --cc_sizes/--no_cc, submit -i -pp -o --sample, validate --sample --images."""


def run(command: str, a: argparse.Namespace) -> None:
    """Run ``command`` for this competition."""
    from nnunet_vasculature.io.rle import allow_long_csv_fields
    from nnunet_vasculature.postprocess.tune import write_json
    allow_long_csv_fields()
    if command == "score":
        if not (a.solution and a.submission):
            raise UserError("score --competition hubmap-kidney: give --solution and --submission")
        scores = score_csv(a.solution, a.submission)
        for k, v in scores.items():
            print(f"{k:<20s} {v:.6f}")
        print(f"{'mean':<20s} {np.mean(list(scores.values())):.6f}")
    elif command == "tune":
        if len(a.labels) != 1:
            raise UserError("tune --competition hubmap-kidney: --labels takes one train.csv (id,encoding)")
        sizes = [] if a.no_cc else ([int(s) for s in a.cc_sizes] if list(map(int, a.cc_sizes)) != SENNET_CC_DEFAULT
                                    else CC_PIXELS)
        res = determine(_stores(a.input), Path(a.labels[0]), sizes)
        write_json(res, a.output)
        for k in res["slides"]:
            print(f"{k:<20s} @0.5 {res['per_slide_at_0.5'][k]:.4f}  @best {res['per_slide_at_threshold'][k]:.4f}")
        print(f"threshold {res['threshold']:.4f} (u8 {res['threshold_u8']}), min component "
              f"{res['min_component_pixels']} px, mean Dice {res['mean_dice']:.4f} "
              f"(at 0.5: {res['mean_dice_at_0.5']:.4f})")
        print(f"wrote {a.output}")
    elif command == "submit":
        submit(_stores(a.input), a.pp, a.output, a.sample)
    elif command == "validate":
        validate(a.submission, a.sample, a.images)
    else:
        raise UserError(f"{command} --competition hubmap-kidney: not available")
