"""HuBMAP Hacking the Human Vasculature download -> nnU-Net raw (2D RGB tiles, DOMAIN §8).

Each annotated tile of the chosen datasets becomes one case ``<id>``: ``imagesTr/<id>_0000.png`` (RGB, read
by nnU-Net's ``NaturalImage2DIO`` as 3 channels) and ``labelsTr/<id>.png`` with background 0,
blood_vessel 1, glomerulus 2 and ``unsure`` either as nnU-Net's ignore label 3 (it must be the highest
label, ``"ignore": 3`` in dataset.json; ignored pixels add nothing to the loss) or as background. Polygons
are filled including their outline, ``unsure`` first, then glomeruli, then vessels on top. Exact
duplicate polygons (dataset 2 has them) are dropped. Test tiles go to ``imagesTs``.
``hubmap_vasculature_cases.json`` keeps each case's WSI, dataset and position; ``splits_final.json`` holds
out one source WSI per fold (``--folds wsi``) or one dataset per fold (``--folds dataset``).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.dataset_conversion.splits import leave_one_group_out
from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.io.paths import nnunet_folder
from nnunet_vasculature.io.polygons import read_polygons

LABELS = {"background": 0, "blood_vessel": 1, "glomerulus": 2}
IGNORE = 3
CASES_FILE = "hubmap_vasculature_cases.json"
# z-score per tile and channel (names other than nnU-Net's special ones get ZScoreNormalization): removes
# the stain/brightness shift between slides; "rgb_to_0_1" keeps absolute colour (divides by 255).
CHANNELS = {"zscore": {"0": "R", "1": "G", "2": "B"},
            "rgb_to_0_1": {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}}


def read_tile_meta(path: Path) -> dict[str, dict]:
    """``tile_meta.csv`` -> {id: {source_wsi, dataset, i, j}}."""
    if not path.is_file():
        raise UserError(f"{path}: missing (the Kaggle tile_meta.csv)")
    out = {}
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        need = {"id", "source_wsi", "dataset", "i", "j"}
        if not r.fieldnames or not need <= set(r.fieldnames):
            raise UserError(f"{path}: expected columns {','.join(sorted(need))}, got {r.fieldnames}")
        for n, row in enumerate(r, 2):
            if row["id"] in out:
                raise UserError(f"{path}:{n}: tile {row['id']} listed twice")
            try:
                out[row["id"]] = {k: int(row[k]) for k in ("source_wsi", "dataset", "i", "j")}
            except ValueError:
                raise UserError(f"{path}: id {row['id']}: source_wsi/dataset/i/j must be integers") from None
    return out


def check_annotation(ann: dict, tile: str, k: int, shape: tuple[int, int]) -> tuple[str, list[np.ndarray]]:
    """Validate one annotation -> (type, rings as (N, 2) [x, y] arrays); UserError naming the tile."""
    where = f"tile {tile} annotation {k}"
    kind = ann.get("type") if isinstance(ann, dict) else None
    if kind not in ("blood_vessel", "glomerulus", "unsure"):
        raise UserError(f"{where}: unknown type {kind!r} (expected blood_vessel, glomerulus or unsure)")
    rings = ann.get("coordinates")
    if not isinstance(rings, list) or not rings:
        raise UserError(f"{where}: 'coordinates' must be a list of rings of [x, y] points")
    out = []
    h, w = shape
    for ring in rings:
        try:
            p = np.asarray(ring, dtype=np.float64)
        except (ValueError, TypeError):
            raise UserError(f"{where}: a ring is not a list of [x, y] numbers") from None
        if p.ndim != 2 or p.shape[1] != 2:
            raise UserError(f"{where}: a ring is not a list of [x, y] points")
        if len(p) < 3:
            raise UserError(f"{where}: polygon with {len(p)} point(s), need at least 3")
        if not np.isfinite(p).all() or p.min() < 0 or (p[:, 0] > w).any() or (p[:, 1] > h).any():
            raise UserError(f"{where}: polygon reaches outside the {w}x{h} tile "
                            f"(x {p[:, 0].min():g}..{p[:, 0].max():g}, y {p[:, 1].min():g}..{p[:, 1].max():g})")
        out.append(p)
    return kind, out


def rasterise(anns: list[dict], tile: str, shape: tuple[int, int], unsure: str = "ignore") -> tuple[np.ndarray, int]:
    """Label image (uint8) of one tile's annotations and the number of exact duplicates dropped."""
    from skimage.draw import polygon, polygon_perimeter
    checked, seen, dups = [], set(), 0
    for k, ann in enumerate(anns):
        kind, rings = check_annotation(ann, tile, k, shape)
        key = (kind, json.dumps(ann.get("coordinates")))
        if key in seen:
            dups += 1
            continue
        seen.add(key)
        checked.append((kind, rings))
    lab = np.zeros(shape, np.uint8)
    values = {"unsure": IGNORE if unsure == "ignore" else 0, **LABELS}
    for kind in ("unsure", "glomerulus", "blood_vessel"):
        for kk, rings in checked:
            if kk != kind:
                continue
            for p in rings:
                rr, cc = polygon(p[:, 1], p[:, 0], shape)
                lab[rr, cc] = values[kind]
                rr, cc = polygon_perimeter(p[:, 1], p[:, 0], shape)
                lab[rr, cc] = values[kind]
    return lab, dups


def _read_tile(path: Path) -> np.ndarray:
    import tifffile
    if not path.is_file():
        raise UserError(f"{path}: tile missing")
    try:
        img = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on a bad file
        raise UserError(f"{path}: not a readable TIFF ({e})") from None
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise UserError(f"{path}: expected an H x W x 3 uint8 RGB tile, got {img.shape} {img.dtype}")
    return img


def _tile_shape(path: Path) -> tuple[int, int]:
    """(H, W) from the TIFF header, without reading the pixels."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as t:
            shape = t.series[0].shape
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on a bad file
        raise UserError(f"{path}: not a readable TIFF ({e})") from None
    if len(shape) != 3 or shape[-1] != 3:
        raise UserError(f"{path}: expected an H x W x 3 RGB tile, got shape {shape}")
    return int(shape[0]), int(shape[1])


def make_splits(cases: dict[str, dict], folds: str) -> list[dict]:
    """One fold per source WSI (``wsi``) or per dataset (``dataset``), in ascending order; [] if only one."""
    key = "source_wsi" if folds == "wsi" else "dataset"
    groups: dict[str, list[str]] = {}
    for k, c in cases.items():
        groups.setdefault(str(c[key]), []).append(k)
    return leave_one_group_out(groups)


def convert_vasculature(kaggle_dir: Path, dataset_id: int, name: str = "HuBMAPVasculature",
                        raw_root: Path | None = None, datasets: tuple[int, ...] = (1, 2), unsure: str = "ignore",
                        folds: str = "wsi", norm: str = "zscore", overwrite: bool = False) -> Path:
    """Convert a Kaggle download into ``<raw_root>/DatasetXXX_<name>``; returns that folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from PIL import Image

    from nnunet_vasculature.dataset_conversion.splits import install_splits
    kaggle_dir = Path(kaggle_dir)
    raw_root = Path(raw_root) if raw_root else nnunet_folder("nnUNet_raw", "pass -o RAW_ROOT")
    ds_name = f"Dataset{dataset_id:03d}_{name}"
    clash = [p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != ds_name and p.is_dir()]
    if clash:
        raise UserError(f"{clash[0]}: dataset ID {dataset_id} is already used by another name")
    if unsure not in ("ignore", "background"):
        raise UserError(f"--unsure {unsure}: expected ignore or background")
    meta = read_tile_meta(kaggle_dir / "tile_meta.csv")
    polys = read_polygons(kaggle_dir / "polygons.jsonl")
    for tid in polys:
        if tid not in meta:
            raise UserError(f"{kaggle_dir / 'polygons.jsonl'}: tile {tid} has no row in tile_meta.csv")
    chosen = sorted(t for t in polys if meta[t]["dataset"] in datasets)
    if not chosen:
        raise UserError(f"{kaggle_dir}: no annotated tiles of dataset(s) {', '.join(map(str, datasets))}")
    for tid in chosen:                       # every problem is reported before anything is written
        if not (kaggle_dir / "train" / f"{tid}.tif").is_file():
            raise UserError(f"{kaggle_dir / 'train' / f'{tid}.tif'}: tile missing")
        for k, ann in enumerate(polys[tid]):
            check_annotation(ann, tid, k, _tile_shape(kaggle_dir / "train" / f"{tid}.tif"))
    cases, dups = {}, 0
    tests = sorted((kaggle_dir / "test").glob("*.tif"))
    with atomic_dir(raw_root / ds_name, overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for tid in tqdm(chosen, desc="convert tiles", unit="tile"):
            img = _read_tile(kaggle_dir / "train" / f"{tid}.tif")
            lab, d = rasterise(polys[tid], tid, img.shape[:2], unsure)
            dups += d
            Image.fromarray(img).save(tmp / "imagesTr" / f"{tid}_0000.png")
            Image.fromarray(lab).save(tmp / "labelsTr" / f"{tid}.png")
            cases[tid] = dict(meta[tid])
        for p in tests:
            Image.fromarray(_read_tile(p)).save(tmp / "imagesTs" / f"{p.stem}_0000.png")
        labels = dict(LABELS, **({"ignore": IGNORE} if unsure == "ignore" else {}))
        generate_dataset_json(str(tmp), CHANNELS[norm], labels, len(cases), ".png", dataset_name=ds_name,
                              overwrite_image_reader_writer="NaturalImage2DIO",
                              description="HuBMAP Hacking the Human Vasculature tiles (nnunet-vasculature)",
                              reference="https://www.kaggle.com/competitions/hubmap-hacking-the-human-vasculature",
                              hubmap_vasculature={"datasets": list(datasets), "unsure": unsure, "folds": folds,
                                                  "duplicates_dropped": dups})
        (tmp / CASES_FILE).write_text(json.dumps(cases, indent=1))
        (tmp / "splits_final.json").write_text(json.dumps(make_splits(cases, folds), indent=1))
    out = raw_root / ds_name
    print(f"wrote {out}: {len(cases)} training tiles, {len(tests)} test tiles, {dups} duplicate polygons dropped")
    install_splits(out)
    return out


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``convert {competition}``."""
    sub = groups["convert"]
    p = sub.add_parser("hubmap-vasculature", help="HuBMAP vasculature tiles -> nnU-Net raw (2D)")
    p.add_argument("kaggle_dir", type=Path, help="Kaggle download folder (train/, polygons.jsonl, tile_meta.csv)")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID, e.g. 502")
    p.add_argument("-n", dest="name", default="HuBMAPVasculature", help="dataset name (default HuBMAPVasculature)")
    p.add_argument("-o", dest="raw_root", type=Path, help="nnU-Net raw root (default $nnUNet_raw)")
    p.add_argument("--datasets", nargs="+", type=int, default=[1, 2], choices=(1, 2),
                   help="which annotated datasets to take (default 1 2)")
    p.add_argument("--unsure", choices=("ignore", "background"), default="ignore",
                   help="'unsure' polygons as nnU-Net's ignore label (default) or as background")
    p.add_argument("--folds", choices=("wsi", "dataset"), default="wsi",
                   help="splits_final.json: hold out one source WSI per fold (default) or one dataset per fold")
    p.add_argument("--norm", choices=tuple(CHANNELS), default="zscore",
                   help="channel names: R,G,B (nnU-Net z-scores each tile and channel, default) or rgb_to_0_1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.set_defaults(func=lambda a: convert_vasculature(a.kaggle_dir, a.dataset_id, a.name, a.raw_root,
                                                      tuple(a.datasets), a.unsure, a.folds, a.norm, a.overwrite))
