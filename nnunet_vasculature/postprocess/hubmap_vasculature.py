"""score/tune/submit/validate for HuBMAP Hacking the Human Vasculature (AP@0.6, COCO RLE; DOMAIN §8).

* ``score --solution S --submission P``: AP@0.6 of a submission CSV against a solution CSV
  (``id,height,width,annotations``: the truth vessel masks in the submission encoding, space-joined, as
  ``synthesize hubmap-vasculature`` writes it).
* ``tune -i PROBS --labels polygons.jsonl -o pp.json``: threshold × minimum size × dilation (× split) by AP on
  the tiles of the probabilities folder(s) that have blood_vessel polygons; writes the best and the grid.
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
from pathlib import Path

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_file

DEFAULT_GRID = {"thresholds": [0.3, 0.4, 0.5, 0.6, 0.7], "min_sizes": [0, 16, 64, 128], "dilations": [0, 1, 2]}


def _add(parser: argparse.ArgumentParser, flag: str, **kw: object) -> None:
    """Add a flag unless another competition already registered it (then its value is read the same way)."""
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **kw)


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Add this competition's own flags to the shared ``command`` parser (score, tune, submit, validate)."""
    if command == "tune":
        _add(parser, "--thresholds", nargs="+", help="hubmap-vasculature: vessel thresholds to try")
        _add(parser, "--min_sizes", nargs="+", help="hubmap-vasculature: minimum instance sizes (pixels) to try")
        _add(parser, "--dilations", nargs="+", help="hubmap-vasculature: instance dilations (pixels) to try")
        _add(parser, "--try_split", action="store_true",
             help="hubmap-vasculature: also try splitting touching vessels")


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


def read_polygons(path: Path) -> dict[str, list[dict]]:
    """{id: annotations} of a Kaggle ``polygons.jsonl``."""
    out = {}
    try:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if line.strip():
                rec = json.loads(line)
                out[str(rec["id"])] = rec["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a polygons.jsonl ({e})") from None
    return out


def _read_csv(path: Path, need: list[str]) -> list[dict]:
    try:
        with open(path, newline="") as f:
            r = csv.DictReader(f)
            if not r.fieldnames or not set(need) <= set(r.fieldnames):
                raise UserError(f"{path}: expected columns {','.join(need)}, got {r.fieldnames}")
            return list(r)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def parse_prediction(text: str, h: int, w: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``0 <score> <mask> …`` -> (N, H, W) bool masks and N scores; UserError naming ``where``."""
    from nnunet_vasculature.io.coco_rle import decode_mask
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
        masks.append(decode_mask(tok[k + 2], h, w, f"{where} instance {k // 3}"))
        scores.append(s)
    return (np.stack(masks) if masks else np.zeros((0, h, w), bool)), np.asarray(scores)


def score_csv(solution: Path, submission: Path) -> float:
    """AP@0.6 of a submission CSV against a solution CSV (tiles missing from the submission: no detections)."""
    from nnunet_vasculature.io.coco_rle import decode_mask
    from nnunet_vasculature.postprocess.average_precision import APAccumulator
    sub = {r["id"]: r for r in _read_csv(submission, ["id", "prediction_string"])}
    acc = APAccumulator()
    for r in _read_csv(solution, ["id", "height", "width", "annotations"]):
        h, w = int(r["height"]), int(r["width"])
        gt = [decode_mask(t, h, w, f"{solution} {r['id']}") for t in r["annotations"].split()]
        gt = np.stack(gt) if gt else np.zeros((0, h, w), bool)
        det, scores = parse_prediction(sub[r["id"]]["prediction_string"] if r["id"] in sub else "", h, w,
                                       f"{submission} {r['id']}")
        acc.add(gt, det, scores)
    return acc.score()


def validate(submission: Path, sample: Path) -> int:
    """Check ids (as in the sample), sizes and every mask; returns the number of instances."""
    rows = _read_csv(submission, ["id", "height", "width", "prediction_string"])
    ref = {r["id"]: r for r in _read_csv(sample, ["id", "height", "width"])}
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{submission}: duplicate id {next(i for i in ids if ids.count(i) > 1)}")
    if set(ids) != set(ref):
        missing, extra = sorted(set(ref) - set(ids)), sorted(set(ids) - set(ref))
        raise UserError(f"{submission}: ids differ from {sample} (missing {missing[:3]}, unexpected {extra[:3]})")
    n = 0
    for r in rows:
        if (r["height"], r["width"]) != (ref[r["id"]]["height"], ref[r["id"]]["width"]):
            raise UserError(f"{submission} {r['id']}: size {r['height']}x{r['width']}, sample says "
                            f"{ref[r['id']]['height']}x{ref[r['id']]['width']}")
        n += len(parse_prediction(r["prediction_string"], int(r["height"]), int(r["width"]),
                                  f"{submission} {r['id']}")[1])
    return n


def submit(folders: list[Path], pp: Path, out: Path, sample: Path | None = None) -> Path:
    """Write the submission CSV from probabilities folders with the tuned instance parameters."""
    from tqdm import tqdm

    from nnunet_vasculature.io.coco_rle import encode_masks
    from nnunet_vasculature.postprocess.instances import (
        instances_from_probabilities,
        list_probabilities,
        load_params,
        read_probabilities,
    )
    params = load_params(pp)
    files = {f.stem: f for d in folders for f in list_probabilities(d)}
    order = list(files)
    if sample is not None:
        order = [r["id"] for r in _read_csv(sample, ["id"])]
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
    """AP of every combination of the grid on the tiles with polygons; the best one and the whole table."""
    from tqdm import tqdm

    from nnunet_vasculature.postprocess.average_precision import APAccumulator
    from nnunet_vasculature.postprocess.instances import (
        InstanceParams,
        instances_from_probabilities,
        list_probabilities,
        read_probabilities,
    )
    truth = read_polygons(polygons)
    files = [f for d in folders for f in list_probabilities(d) if f.stem in truth]
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


def _grid(a: argparse.Namespace) -> dict:
    out = {}
    for k, v in DEFAULT_GRID.items():
        given = getattr(a, k, None)
        try:
            out[k] = [float(x) if k == "thresholds" else int(x) for x in given] if given else v
        except ValueError:
            raise UserError(f"--{k}: expected numbers, got {given}") from None
    return out


def run(command: str, a: argparse.Namespace) -> None:
    """Run ``command`` for this competition."""
    if command == "score":
        if not (a.solution and a.submission):
            raise UserError("score --competition hubmap-vasculature: give --solution and --submission")
        print(f"AP@0.6 {score_csv(a.solution, a.submission):.6f}")
    elif command == "tune":
        if len(a.labels) != 1:
            raise UserError("tune --competition hubmap-vasculature: --labels takes one polygons.jsonl")
        res = determine([Path(p) for p in a.input], Path(a.labels[0]), _grid(a), getattr(a, "try_split", False))
        with atomic_file(a.output) as tmp:
            tmp.write_text(json.dumps(res, indent=1))
        i = res["instances"]
        print(f"best AP@0.6 {res['ap']:.4f} (defaults: {res['ap_at_defaults']}) at threshold {i['threshold']}, "
              f"min size {i['min_size']}, dilate {i['dilate']}, split {i['split']} on {len(res['tiles'])} tiles")
        print(f"wrote {a.output}")
    elif command == "submit":
        print(f"wrote {submit([Path(p) for p in a.input], a.pp, a.output, a.sample)}")
    elif command == "validate":
        n = validate(a.submission, a.sample)
        print(f"{a.submission}: valid ({n} instances)")
    else:
        raise UserError(f"{command} --competition hubmap-vasculature: not supported")
