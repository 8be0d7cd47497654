"""HuBMAP Hacking the Human Vasculature post-processing (AP@0.6, COCO RLE; DOMAIN §8): ``score``, ``tune``,
``apply``, ``submit``, ``validate`` and ``overlay hubmap-vasculature``.

* ``score --solution S --submission P``: AP@0.6 of a submission CSV against a solution CSV
  (``id,height,width,annotations``: the truth vessel masks in the submission encoding, space-joined, as
  ``synthesize hubmap-vasculature`` writes it).
* ``tune -i PROBS --labels polygons.jsonl -o pp.json``: threshold × minimum size × dilation (× split) by AP on
  the tiles of the probabilities folder(s) that have blood_vessel polygons; writes the best and the grid.
* ``apply -i PROBS -o INSTANCES [-pp pp.json]``: ``<case>.npz`` instances and scores per tile.
* ``submit -i PROBS -pp pp.json -o submission.csv [--sample]``: ``id,height,width,prediction_string`` with
  ``0 <score> <mask>`` space-joined per instance.
* ``validate SUBMISSION --sample S``: ids, sizes, every mask decodes to its tile size.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.polygons import read_polygons
from nnunet_vasculature.io.tables import read_table
from nnunet_vasculature.postprocess.files import check_outputs, refuse_other_competition
from nnunet_vasculature.postprocess.instances import InstanceParams
from nnunet_vasculature.postprocess.tune import (
    grid_edge_warning,
    non_negative_int,
    probability,
    read_postprocessing,
    warn,
    write_postprocessing,
)

if TYPE_CHECKING:     # the metric module is imported where a tile is scored
    from nnunet_vasculature.metrics.average_precision import RLEMasks

COMPETITION = "hubmap-vasculature"
DEFAULT_GRID = {"thresholds": [0.3, 0.4, 0.5, 0.6, 0.7], "min_sizes": [0, 16, 64, 128], "dilations": [0, 1, 2]}
HIT = (255, 255, 255)          # outline of a detection that matches a truth at IoU >= 0.6


def polygon_masks(anns: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool: one filled polygon (outline included) per distinct ``blood_vessel`` annotation."""
    from skimage.draw import polygon, polygon_perimeter
    seen, out = set(), []
    for a in anns:
        if a.get("type") != "blood_vessel" or json.dumps(a.get("coordinates")) in seen:
            continue
        seen.add(json.dumps(a.get("coordinates")))
        m = np.zeros(shape, bool)
        for ring in a["coordinates"]:
            p = np.asarray(ring, float)
            m[polygon(p[:, 1], p[:, 0], shape)] = True
            m[polygon_perimeter(p[:, 1], p[:, 0], shape)] = True
        out.append(m)
    return np.stack(out) if out else np.zeros((0, *shape), bool)


IOU_MATRIX_BYTES = 256 * 2 ** 20      # the most one tile's IoU matrix (detections x truths, float64) may take


def check_pair_count(n_det: int, n_gt: int, where: str) -> None:
    """Refuse a tile whose IoU matrix (``n_det x n_gt`` float64) would exceed :data:`IOU_MATRIX_BYTES`.

    Args:
        n_det: detections in the tile.
        n_gt: truths in the tile.
        where: the file and tile id, for the message.

    Raises:
        UserError: one line naming ``where``, the counts and the cap.
    """
    if n_det * n_gt * 8 > IOU_MATRIX_BYTES:
        raise UserError(f"{where}: {n_det} instances against {n_gt} truths in one tile; their IoU table would take "
                        f"{n_det * n_gt * 8 / 2 ** 20:.0f} MiB, at most {IOU_MATRIX_BYTES // 2 ** 20} MiB are scored")


def parse_prediction(text: str, h: int, w: int, where: str, keep_masks: bool = True
                     ) -> tuple[RLEMasks | None, np.ndarray]:
    """``0 <score> <mask> …`` -> the N masks (checked RLEs, never decoded) and N scores; UserError naming
    ``where``.

    Args:
        text: the row's ``prediction_string``.
        h: tile height.
        w: tile width.
        where: the file and tile id, for messages.
        keep_masks: False: check each mask and keep none (masks returned: None).

    Returns:
        (masks, scores): :class:`~nnunet_vasculature.metrics.average_precision.RLEMasks` (memory follows the
        runs, not N x H x W) or None, and the scores.
    """
    from nnunet_vasculature.io.coco_rle import read_rle
    from nnunet_vasculature.metrics.average_precision import RLEMasks
    tok = text.split()
    if len(tok) % 3:
        raise UserError(f"{where}: prediction_string must be triples '0 <score> <mask>', got {len(tok)} tokens")
    masks, scores = [], []
    for k in range(0, len(tok), 3):
        if tok[k] != "0":
            raise UserError(f"{where}: class {tok[k]!r} (only 0 = blood_vessel is scored)")
        try:
            s = float(tok[k + 1])
        except ValueError:
            raise UserError(f"{where}: score {tok[k + 1]!r} is not a number") from None
        if not math.isfinite(s):
            raise UserError(f"{where}: score {tok[k + 1]!r} is not finite")
        rle = read_rle(tok[k + 2], h, w, f"{where} instance {k // 3}")
        if keep_masks:
            masks.append(rle)
        scores.append(s)
    return (RLEMasks(tuple(masks), (h, w)) if keep_masks else None), np.asarray(scores)


def _tile_truth(r: dict, solution: Path) -> tuple[int, int, RLEMasks]:
    from nnunet_vasculature.io.coco_rle import read_rle
    from nnunet_vasculature.metrics.average_precision import RLEMasks
    try:
        h, w = int(r["height"]), int(r["width"])
    except ValueError:
        raise UserError(f"{solution} {r['id']}: height/width are not integers") from None
    gt = [read_rle(t, h, w, f"{solution} {r['id']}") for t in r["annotations"].split()]
    return h, w, RLEMasks(tuple(gt), (h, w))


def score_csv(solution: Path, submission: Path) -> float:
    """AP@0.6 of a submission CSV against a solution CSV (tiles missing from the submission: no detections;
    a repeated id in either file is refused).

    Returns:
        The AP.
    """
    from nnunet_vasculature.metrics.average_precision import APAccumulator
    sub = {r["id"]: r for r in read_table(submission, ["id", "prediction_string"], competition=COMPETITION)}
    acc = APAccumulator()
    for r in read_table(solution, ["id", "height", "width", "annotations"], competition=COMPETITION):
        h, w, gt = _tile_truth(r, solution)
        where = f"{submission} {r['id']}"
        det, scores = parse_prediction(sub[r["id"]]["prediction_string"] if r["id"] in sub else "", h, w, where)
        check_pair_count(len(det), len(gt), where)
        acc.add(gt, det, scores)
    return acc.score()


def validate(submission: Path, sample: Path) -> int:
    """Check ids (as in the sample, none repeated), sizes and every mask.

    Returns:
        The number of instances.
    """
    rows = read_table(submission, ["id", "height", "width", "prediction_string"], competition=COMPETITION)
    ref = {r["id"]: r for r in read_table(sample, ["id", "height", "width"], competition=COMPETITION)}
    ids = [r["id"] for r in rows]
    if set(ids) != set(ref):
        missing, extra = sorted(set(ref) - set(ids)), sorted(set(ids) - set(ref))
        raise UserError(f"{submission}: ids differ from {sample} (missing {missing[:3]}, unexpected {extra[:3]})")
    n = 0
    for r in rows:
        if (r["height"], r["width"]) != (ref[r["id"]]["height"], ref[r["id"]]["width"]):
            raise UserError(f"{submission} {r['id']}: size {r['height']}x{r['width']}, sample says "
                            f"{ref[r['id']]['height']}x{ref[r['id']]['width']}")
        n += len(parse_prediction(r["prediction_string"], int(r["height"]), int(r["width"]),
                                  f"{submission} {r['id']}", keep_masks=False)[1])
    return n


def probability_files(folders: list[Path]) -> dict[str, Path]:
    """{tile id: ``<id>.npz``} of probabilities folders; a tile found in two folders is refused."""
    from nnunet_vasculature.postprocess.instances import list_probabilities
    files: dict[str, Path] = {}
    for folder in folders:
        for f in list_probabilities(folder):
            if f.stem in files:
                raise UserError(f"{f}: tile {f.stem} also in {files[f.stem].parent}; give each tile once")
            files[f.stem] = f
    return files


def load_params(path: Path | None) -> InstanceParams:
    """InstanceParams of a ``tune hubmap-vasculature`` file (defaults without one; another competition's file
    and values out of range are refused).

    Returns:
        The parameters.
    """
    if path is None:
        return InstanceParams()
    record = read_postprocessing(path, COMPETITION)
    try:
        d = record["instances"]
        return InstanceParams(**{k: d[k] for k in asdict(InstanceParams())})
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a hubmap-vasculature postprocessing.json ({e})") from None


def submit(folders: list[Path], pp: Path, out: Path, sample: Path | None = None) -> Path:
    """Write the submission CSV from probabilities folders with the tuned instance parameters.

    Returns:
        ``out``.
    """
    from tqdm import tqdm

    from nnunet_vasculature.io.coco_rle import encode_masks
    from nnunet_vasculature.postprocess.instances import instances_from_probabilities, read_probabilities
    params = load_params(pp)
    files = probability_files(folders)
    order = list(files)
    if sample is not None:
        order = [r["id"] for r in read_table(sample, ["id"], competition=COMPETITION)]
        missing = [i for i in order if i not in files]
        if missing:
            raise UserError(f"{folders[0]}: no probabilities for tile {missing[0]} of {sample}")
    with atomic_file(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "height", "width", "prediction_string"])
        for tid in tqdm(order, desc="submit", unit="tile"):
            lab, scores = instances_from_probabilities(*read_probabilities(files[tid]), params)
            masks = np.stack([lab == k for k in range(1, len(scores) + 1)]) if len(scores) else \
                np.zeros((0, *lab.shape), bool)
            text = " ".join(f"0 {s:.6f} {m}" for s, m in zip(scores, encode_masks(masks)))
            w.writerow([tid, lab.shape[0], lab.shape[1], text])
    return Path(out)


def determine(folders: list[Path], polygons: Path, grid: dict, try_split: bool = False) -> dict:
    """AP of every combination of the grid on the tiles with polygons; the best one and the whole table.

    Args:
        folders: probabilities folders.
        polygons: the Kaggle ``polygons.jsonl``.
        grid: ``thresholds``, ``min_sizes``, ``dilations`` to try.
        try_split: also try splitting touching vessels.

    Returns:
        The decision and the table (postprocessing.json without its competition record).
    """
    from tqdm import tqdm

    from nnunet_vasculature.metrics.average_precision import APAccumulator
    from nnunet_vasculature.postprocess.instances import instances_from_probabilities, read_probabilities
    truth = read_polygons(polygons)
    files = [f for f in probability_files(folders).values() if f.stem in truth]
    if not files:
        raise UserError(f"{polygons}: none of the probability files' tiles has polygons")
    tiles = []
    for f in files:
        v, g = read_probabilities(f)
        tiles.append((v, g, polygon_masks(truth[f.stem], v.shape)))
    combos = list(itertools.product(grid["thresholds"], grid["min_sizes"], grid["dilations"],
                                    (False, True) if try_split else (False,)))
    table = []
    for t, m, d, s in tqdm(combos, desc="tune AP@0.6", unit="setting"):
        p = InstanceParams(float(t), int(m), int(d), bool(s))
        acc = APAccumulator()
        for v, g, gt in tiles:
            lab, scores = instances_from_probabilities(v, g, p)
            acc.add(gt, lab, scores)
        table.append({**p.__dict__, "ap": acc.score()})
    best = max(table, key=lambda r: -1 if math.isnan(r["ap"]) else r["ap"])
    default = next((r for r in table if r["threshold"] == 0.5 and r["min_size"] == 0 and r["dilate"] == 0
                    and not r["split"]), None)
    return {"metric": "AP@0.6 (OpenImages, pooled over tiles)", "tiles": [f.stem for f in files],
            "instances": {k: best[k] for k in ("threshold", "min_size", "dilate", "split", "glomerulus_filter")},
            "ap": best["ap"], "ap_at_defaults": default["ap"] if default else None, "grid": table}


def plot_grid(result: dict, out_png: Path) -> None:
    """AP versus threshold, one line per (minimum size, dilation, split) of the grid; the best marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lines: dict[tuple, list[tuple[float, float]]] = {}
    for r in result["grid"]:
        lines.setdefault((r["min_size"], r["dilate"], r["split"]), []).append((r["threshold"], r["ap"]))
    best = result["instances"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (size, dilate, split), points in sorted(lines.items()):
        x, y = zip(*sorted(points))
        chosen = (size, dilate, split) == (best["min_size"], best["dilate"], best["split"])
        ax.plot(x, y, "o-", lw=2.5 if chosen else 1, alpha=1 if chosen else 0.6,
                label=f"min size {size}, dilate {dilate}" + (", split" if split else ""))
    ax.plot([best["threshold"]], [result["ap"]], "r*", ms=14, label=f"best: AP {result['ap']:.4f}")
    ax.set_xlabel("vessel threshold (probability)")
    ax.set_ylabel("AP@0.6")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_file(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def draw_overlay(image: np.ndarray, annotations: list[dict], lab: np.ndarray, scores: np.ndarray, png: Path,
                 tile_id: str = "") -> dict:
    """Tile | truth outlines (vessels green, glomeruli blue, unsure yellow) | predicted instances coloured by
    score (blue 0 -> red 1), hits at IoU 0.6 outlined in white, truth vessels outlined in green; titled with
    the tile's AP.

    Args:
        image: the tile (H, W, 3).
        annotations: its ``polygons.jsonl`` annotations.
        lab: predicted instances (label image).
        scores: one score per instance.
        png: the picture to write.
        tile_id: for the title.

    Returns:
        ``hits`` and ``instances`` (counts) and ``ap`` (of this tile).
    """
    from skimage.segmentation import find_boundaries

    from nnunet_vasculature.metrics.average_precision import average_precision, mask_ious, match_tile
    from nnunet_vasculature.postprocess.overlay import as_rgb, save_panels
    rgb = as_rgb(image)
    truth = polygon_masks(annotations, rgb.shape[:2])
    hits = match_tile(mask_ious(lab, truth), scores) if len(scores) else np.zeros(0, bool)
    ap = average_precision([(truth, lab, scores)])
    outlines = _outlined(rgb, annotations)
    right = rgb.astype(np.float32)
    for k, s in enumerate(scores, 1):
        m = lab == k
        right[m] = 0.35 * right[m] + 0.65 * np.array([255 * s, 30, 255 * (1 - s)], np.float32)
    right = _outlined(np.clip(right, 0, 255).astype(np.uint8), annotations, ("blood_vessel",))
    for k in np.flatnonzero(hits) + 1:
        right[find_boundaries(lab == k, mode="inner")] = HIT
    bar = max(1, min(128, right.shape[1] - 8))            # the score scale, bottom left
    right[-14:-4, 4:4 + bar] = np.stack([[255 * v, 30, 255 * (1 - v)] for v in np.linspace(0, 1, bar)])[None]
    save_panels([[(f"tile {tile_id}", rgb), (f"truth: {len(truth)} vessels", outlines),
                  (f"{len(scores)} instances, {int(hits.sum())} hits (white): AP@0.6 {ap:.3f}", right)]],
                f"{tile_id}: instances coloured by score (scale bottom left: blue 0 -> red 1)", png,
                footnote="outlines: green truth vessel, blue glomerulus, yellow unsure; white: a hit at IoU >= 0.6")
    return {"hits": int(hits.sum()), "instances": int(len(scores)), "ap": ap}


def _outlined(rgb: np.ndarray, annotations: list[dict], types: tuple[str, ...] | None = None) -> np.ndarray:
    from PIL import Image, ImageDraw
    colours = {"blood_vessel": (0, 200, 0), "glomerulus": (0, 80, 255)}
    panel = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(panel)
    for a in annotations:
        if types is None or a.get("type") in types:
            for ring in a["coordinates"]:
                draw.polygon([tuple(p) for p in ring], outline=colours.get(a.get("type"), (255, 220, 0)))
    return np.array(panel)


def _instances_of(pred: Path, tile_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A tile's instances from an ``apply`` folder or file (``<id>.npz``) or a submission CSV."""
    if pred.suffix == ".csv":
        row = next((r for r in read_table(pred, ["id", "prediction_string"], competition=COMPETITION)
                    if r["id"] == tile_id), None)
        if row is None:
            raise UserError(f"{pred}: no row for tile {tile_id}")
        det, scores = parse_prediction(row["prediction_string"], *shape, f"{pred} {tile_id}")
        lab = np.zeros(shape, np.int32)
        for k, m in enumerate(det.masks(), 1):
            lab[m & (lab == 0)] = k
        return lab, scores
    path = pred / f"{tile_id}.npz" if pred.is_dir() else pred
    try:
        with np.load(path) as z:
            return z["instances"], z["scores"]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not an instances .npz of 'apply hubmap-vasculature' ({e})") from None


def _grid(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k) or v for k, v in DEFAULT_GRID.items()}


def _run_score(a: argparse.Namespace) -> None:
    refuse_other_competition([a.solution, a.submission], COMPETITION, "score")
    print(f"AP@0.6 {score_csv(a.solution, a.submission):.6f}")


def _run_tune(a: argparse.Namespace) -> None:
    refuse_other_competition([*a.input, a.labels], COMPETITION, "tune")
    check_outputs([("-i", p) for p in a.input] + [("--labels", a.labels)], [("-o", a.output), ("--plot", a.plot)])
    grid = _grid(a)
    res = determine(a.input, a.labels, grid, a.try_split)
    write_postprocessing(res, a.output, COMPETITION)
    i = res["instances"]
    print(f"best AP@0.6 {res['ap']:.4f} (defaults: {res['ap_at_defaults']}) at threshold {i['threshold']}, "
          f"min size {i['min_size']}, dilate {i['dilate']}, split {i['split']} on {len(res['tiles'])} tiles")
    for message in (grid_edge_warning("--thresholds", grid["thresholds"], i["threshold"]),
                    grid_edge_warning("--min_sizes", grid["min_sizes"], i["min_size"], True),
                    grid_edge_warning("--dilations", grid["dilations"], i["dilate"], True)):
        if message:
            warn(message)
    if a.plot:
        plot_grid(res, a.plot)
    print(f"wrote {a.output}")


def _run_apply(a: argparse.Namespace) -> None:
    from nnunet_vasculature.postprocess.instances import write_instances
    check_outputs([("-i", a.input), ("-pp", a.pp)], [("-o", a.output)])
    params = load_params(a.pp) if a.pp else InstanceParams(a.threshold, a.min_size, a.dilate, a.split,
                                                           not a.no_glomerulus_filter)
    print(f"wrote {write_instances(a.input, a.output, params, a.overwrite)}")


def _run_submit(a: argparse.Namespace) -> None:
    refuse_other_competition([*a.input, a.sample], COMPETITION, "submit")
    check_outputs([("-i", p) for p in a.input] + [("-pp", a.pp), ("--sample", a.sample)], [("-o", a.output)])
    print(f"wrote {submit(a.input, a.pp, a.output, a.sample)}")


def _run_validate(a: argparse.Namespace) -> None:
    refuse_other_competition([a.submission, a.sample], COMPETITION, "validate")
    n = validate(a.submission, a.sample)
    print(f"{a.submission}: valid ({n} instances)")


def _run_overlay(a: argparse.Namespace) -> None:
    import tifffile
    refuse_other_competition([a.labels, a.pred], COMPETITION, "overlay")
    check_outputs([("--tile", a.tile), ("--labels", a.labels), ("--pred", a.pred)], [("-o", a.output)])
    tile_id = a.id or a.tile.stem
    truth = read_polygons(a.labels)
    if tile_id not in truth:
        raise UserError(f"{a.labels}: no record for tile {tile_id}")
    try:
        image = tifffile.imread(a.tile)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for a bad file
        raise UserError(f"{a.tile}: not a readable TIFF ({type(e).__name__})") from None
    lab, scores = _instances_of(a.pred, tile_id, image.shape[:2])
    seen = draw_overlay(image, truth[tile_id], lab, scores, a.output, tile_id)
    print(f"wrote {a.output} ({seen['instances']} instances, {seen['hits']} hits, AP@0.6 {seen['ap']:.4f})")


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Register ``hubmap-vasculature`` under score, tune, apply, submit, validate and overlay (those of ``groups``)."""
    if "score" in groups:
        s = groups["score"].add_parser(COMPETITION, help="AP@0.6 of a submission")
        s.add_argument("--solution", type=Path, required=True, help="solution CSV (id,height,width,annotations)")
        s.add_argument("--submission", type=Path, required=True, help="submission CSV")
        s.set_defaults(func=_run_score)
    if "tune" in groups:
        t = groups["tune"].add_parser(COMPETITION, help="instance parameters by AP@0.6 on tiles with polygons")
        t.add_argument("-i", dest="input", nargs="+", type=Path, required=True,
                       help="folders of <case>.npz from nnUNetv2_predict --save_probabilities")
        t.add_argument("--labels", type=Path, required=True, help="polygons.jsonl")
        t.add_argument("-o", dest="output", type=Path, required=True, help="postprocessing.json to write")
        t.add_argument("--plot", type=Path, help="write AP vs threshold for every grid setting (PNG)")
        t.add_argument("--thresholds", nargs="+", type=probability, help="vessel thresholds to try")
        t.add_argument("--min_sizes", nargs="+", type=non_negative_int, help="minimum instance sizes (pixels)")
        t.add_argument("--dilations", nargs="+", type=non_negative_int, help="instance dilations (pixels)")
        t.add_argument("--try_split", action="store_true", help="also try splitting touching vessels")
        t.set_defaults(func=_run_tune)
    if "apply" in groups:
        d = InstanceParams()
        p = groups["apply"].add_parser(COMPETITION, help="turn vessel probabilities into scored instances")
        p.add_argument("-i", dest="input", type=Path, required=True,
                       help="folder of <case>.npz from nnUNetv2_predict --save_probabilities")
        p.add_argument("-o", dest="output", type=Path, required=True, help="output folder of <case>.npz instances")
        p.add_argument("-pp", type=Path, help="take the parameters from a tune hubmap-vasculature JSON")
        p.add_argument("--threshold", type=probability, default=d.threshold)
        p.add_argument("--min_size", type=non_negative_int, default=d.min_size, help="drop instances of fewer pixels")
        p.add_argument("--dilate", type=non_negative_int, default=d.dilate,
                       help="grow each instance by this many pixels")
        p.add_argument("--split", action="store_true", help="split touching vessels (distance-transform watershed)")
        p.add_argument("--no_glomerulus_filter", action="store_true",
                       help="keep vessel predictions inside predicted glomeruli")
        p.add_argument("--overwrite", action="store_true")
        p.set_defaults(func=_run_apply)
    if "submit" in groups:
        sm = groups["submit"].add_parser(COMPETITION, help="write the submission CSV")
        sm.add_argument("-i", dest="input", nargs="+", type=Path, required=True, help="probabilities folders")
        sm.add_argument("-pp", type=Path, required=True, help="postprocessing.json from tune hubmap-vasculature")
        sm.add_argument("-o", dest="output", type=Path, required=True, help="submission CSV to write")
        sm.add_argument("--sample", type=Path, help="sample_submission.csv: row order and the ids that must be present")
        sm.set_defaults(func=_run_submit)
    if "validate" in groups:
        v = groups["validate"].add_parser(COMPETITION, help="check a submission against the sample submission")
        v.add_argument("submission", type=Path)
        v.add_argument("--sample", type=Path, required=True)
        v.set_defaults(func=_run_validate)
    if "overlay" in groups:
        o = groups["overlay"].add_parser(COMPETITION, help="draw a tile's instances against its polygons (PNG)")
        o.add_argument("--tile", type=Path, required=True, help="the tile TIFF")
        o.add_argument("--labels", type=Path, required=True, help="polygons.jsonl with the tile's annotations")
        o.add_argument("--pred", type=Path, required=True,
                       help="apply's output folder or <id>.npz, or a submission CSV")
        o.add_argument("--id", help="the tile's id (default: the TIFF's name)")
        o.add_argument("-o", dest="output", type=Path, required=True, help="PNG to write")
        o.set_defaults(func=_run_overlay)
