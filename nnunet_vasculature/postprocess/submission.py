"""Kaggle submissions: write (``submit``), check (``validate``) and score (``score``) CSV files."""
from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path

from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.rle import rle_decode, rle_encode, rle_runs
from nnunet_vasculature.io.sennet import split_slice_id
from nnunet_vasculature.io.volumes import expand_probabilities, open_probabilities
from nnunet_vasculature.postprocess.surface_dice import SurfaceDiceAccumulator
from nnunet_vasculature.postprocess.tune import load_postprocessing, masks, slice_ids


def split_id(i: str) -> tuple[str, int]:
    """``kidney_5_0012`` -> (``kidney_5``, 12)."""
    kidney, name = split_slice_id(i)
    return kidney, int(name)


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in required if c not in cols]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(cols) or 'none'})")
            return list(reader)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def submit(prob_paths: list, pp_path: Path | str, out_csv: Path, sample: Path | None = None) -> Path:
    """One row per slice, ``id,rle``; in the sample's order when a sample submission is given."""
    pp = load_postprocessing(pp_path)
    rows: "OrderedDict[str, str]" = OrderedDict()
    for path in expand_probabilities(prob_paths):
        prob, attrs = open_probabilities(path)
        ids = slice_ids(path, prob, attrs)
        with tqdm(total=prob.shape[0], desc=f"submit {Path(path).name}", unit="slice") as bar:
            for z0, m in masks(prob, pp):
                for i, plane in enumerate(m):
                    rows[ids[z0 + i]] = rle_encode(plane)
                bar.update(len(m))
    if sample is not None:
        order = [r["id"] for r in read_csv(sample, ("id",))]
        missing = [i for i in order if i not in rows]
        if missing:
            raise UserError(f"{sample}: id {missing[0]} has no prediction ({len(missing)} ids missing)")
        extra = [i for i in rows if i not in set(order)]
        if extra:
            raise UserError(f"{sample}: predicted id {extra[0]} is not in the sample submission "
                            f"({len(extra)} such ids)")
    else:
        order = list(rows)
    with atomic_file(Path(out_csv)) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("id", "rle"))
            w.writerows((i, rows[i]) for i in order)
    print(f"wrote {out_csv} ({len(order)} rows)" + ("" if sample is not None else
          "; ids and row order were not checked against a sample submission (pass --sample)"))
    return Path(out_csv)


def validate(sub_csv: Path, sample: Path, shapes: dict[str, tuple[int, int]] | None = None) -> int:
    """Raise UserError on missing/duplicate/unknown ids, malformed RLE, runs out of bounds."""
    rows = read_csv(sub_csv, ("id", "rle"))
    expected = [r["id"] for r in read_csv(sample, ("id",))]
    seen: dict[str, str] = {}
    for n, r in enumerate(rows, start=2):
        i = r["id"]
        if i in seen:
            raise UserError(f"{sub_csv}:{n}: duplicate id {i}")
        seen[i] = r["rle"]
        try:
            kidney, _ = split_id(i)
            shape = (shapes or {}).get(kidney, None)
            _check_rle(r["rle"], shape)
        except ValueError as e:
            raise UserError(f"{sub_csv}:{n}: id {i}: {e}") from None
    missing = [i for i in expected if i not in seen]
    if missing:
        raise UserError(f"{sub_csv}: id {missing[0]} of the sample submission is missing ({len(missing)} missing)")
    unknown = [i for i in seen if i not in set(expected)]
    if unknown:
        raise UserError(f"{sub_csv}: id {unknown[0]} is not in the sample submission ({len(unknown)} unknown)")
    print(f"{sub_csv}: {len(rows)} rows, valid" + ("" if shapes else
          "; runs were not checked against slice sizes (pass --images KAGGLE/test)"))
    return len(rows)


def _check_rle(rle: str, shape: tuple[int, int] | None) -> None:
    if shape is not None:
        rle_decode(rle, shape)
    else:
        rle_runs(rle)


def score_csv(solution: Path, submission: Path) -> dict[str, float]:
    """Per-kidney surface Dice like the official metric: rows grouped by kidney, slices stacked in
    slice order, spacing 1. A kidney whose labels and prediction are both empty scores NaN (0/0) and
    is left out of the mean."""
    sol = read_csv(solution, ("id", "rle", "width", "height"))
    sub = {r["id"]: r["rle"] for r in read_csv(submission, ("id", "rle"))}
    kidneys: dict[str, list] = {}
    for r in sol:
        if r["id"] not in sub:
            raise UserError(f"{submission}: id {r['id']} of the solution is missing")
        try:
            k, z = split_id(r["id"])
        except ValueError as e:
            raise UserError(f"{solution}: {e}") from None
        kidneys.setdefault(k, []).append((z, r))
    scores = {}
    for k, items in kidneys.items():
        items.sort(key=lambda t: t[0])
        shape = (int(items[0][1]["height"]), int(items[0][1]["width"]))
        acc = SurfaceDiceAccumulator(shape)
        for _, r in items:
            try:
                pred = rle_decode(sub[r["id"]], shape)
            except ValueError as e:
                raise UserError(f"{submission}: id {r['id']}: {e}") from None
            acc.add(pred[None], rle_decode(r["rle"], shape)[None])
        scores[k] = acc.score()
    return scores
