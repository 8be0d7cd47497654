"""HuBMAP Hacking the Kidney download -> nnU-Net raw (2D).

Each training slide is read region by region (never whole at full resolution), downscaled by
``--downscale`` (area average), and cut into tissue tiles of ``--tile`` px (at the downscaled size);
every tile that holds tissue or glomeruli is one 2D case ``<slide>_y<Y>_x<X>`` (offsets in downscaled
pixels), an RGB PNG ``<case>_0000.png`` read by nnU-Net's ``NaturalImage2DIO``. Tiles as cases bound
nnU-Net's memory per case (a whole 50k px slide at 4x would be a 12.5k x 12.5k float32 image in every
preprocessing worker) and drop the glass. The three channels are named ``rgb_to_0_1``: nnU-Net then
divides by 255 (``RGBTo01Normalization``), a fixed map that the slide predictor applies identically to
any tile; R/G/B names would give per-case z-scoring, which depends on how much glass a tile holds.

Masks come from ``train.csv`` (column-major RLE; classes ``glomerulus``) or, with ``--classes
glomerulus unhealthy``, from the polygon JSONs (label 2 for polygons whose classification name contains
"unhealthy"). Folds are leave-one-patient-out (``patient_number`` of the information CSV).
``--pseudo ID=STORE`` adds a test slide with the mask of a ``predict hubmap-kidney`` probability store.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.dataset_conversion.splits import leave_one_group_out
from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.io.paths import nnunet_folder
from nnunet_vasculature.io.rle import column_major_regions
from nnunet_vasculature.io.slide import INFO_CSV, Slide, area_downscale, read_info, tissue_mask
from nnunet_vasculature.io.store import SLIDE_OUTPUT, add_foreign_flag

CASES_FILE = "hubmap_kidney_cases.json"
CHANNEL_NAME = "rgb_to_0_1"
THUMB = 8            # tissue thumbnail: every (downscale * THUMB)-th pixel

MaskFn = Callable[[int, int, int, int], np.ndarray]     # (y0, y1, x0, x1) -> full-resolution labels


def rle_region_fn(encoding: str, height: int, width: int, where: str) -> MaskFn:
    """Full-resolution region reader of a column-major RLE mask (``column_major_regions``); bad RLE is a
    UserError naming ``where``."""
    try:
        return column_major_regions(encoding, height, width)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def read_polygons(path: Path, with_unhealthy: bool) -> list[tuple[np.ndarray, int]]:
    """(ring [x, y] array, label) of each polygon of a glomerulus JSON (holes ignored)."""
    try:
        feats = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the polygon JSON ({type(e).__name__})") from None
    feats = feats.get("features", []) if isinstance(feats, dict) else feats
    out = []
    for f in feats:
        try:
            geom = f["geometry"]
            name = str(((f.get("properties") or {}).get("classification") or {}).get("name", "glomerulus"))
            polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
            label = 2 if with_unhealthy and "unhealthy" in name.lower() else 1
            out += [(np.asarray(p[0], np.float64), label) for p in polys]
        except (KeyError, TypeError, IndexError):
            raise UserError(f"{path}: a feature without Polygon/MultiPolygon geometry") from None
    return out


def polygon_labels(polys: list[tuple[np.ndarray, int]], y0: int, x0: int, shape: tuple[int, int], ds: int
                   ) -> np.ndarray:
    """Labels of a downscaled tile: polygons rasterised at the downscaled pixel centres (unhealthy on top)."""
    from skimage.draw import polygon
    lab = np.zeros(shape, np.uint8)
    for ring, label in sorted(polys, key=lambda t: t[1]):
        yy, xx = (ring[:, 1] + 0.5) / ds - 0.5 - y0, (ring[:, 0] + 0.5) / ds - 0.5 - x0
        if yy.max() < 0 or xx.max() < 0 or yy.min() >= shape[0] or xx.min() >= shape[1]:
            continue
        rr, cc = polygon(yy, xx, shape=shape)
        lab[rr, cc] = label
    return lab


def store_region_fn(store: Path, height: int, width: int, level: int = 128, foreign_probabilities: bool = False
                    ) -> MaskFn:
    """Pseudo-label region reader: a ``predict hubmap-kidney`` probability store thresholded at ``level``.

    Args:
        store: the ``<id>.zarr`` store.
        height: the slide's height (px), which the store must have.
        width: the slide's width (px).
        level: the uint8 level from which a pixel is foreground.
        foreign_probabilities: read a store without predict's record (``--foreign_probabilities``, as
            :func:`~nnunet_vasculature.io.store.open_slide_probabilities`).

    Returns:
        ``(y0, y1, x0, x1) -> uint8 labels`` at full resolution.
    """
    from nnunet_vasculature.io.store import open_slide_probabilities
    arr = open_slide_probabilities(store, foreign_probabilities)
    if tuple(arr.shape) != (height, width):
        raise UserError(f"{store}: shape {tuple(arr.shape)} but the slide is {height} x {width}")
    return lambda y0, y1, x0, x1: (np.asarray(arr[y0:y1, x0:x1]) >= level).astype(np.uint8)


def convert_slide(slide: Slide, labels: Callable[[int, int, int, int, int, int], np.ndarray], ds: int, tile: int,
                  write: Callable[[str, np.ndarray, np.ndarray], None], sid: str) -> list[dict]:
    """Cut one slide into tissue tiles; ``labels(y0, y1, x0, x1, Y, X)`` gives a tile's downscaled labels."""
    thumb_f = ds * THUMB
    tissue = tissue_mask(slide.thumbnail(thumb_f))
    T = tile * ds
    cases = []
    grid = [(y, x) for y in range(0, slide.height, T) for x in range(0, slide.width, T)]
    for y, x in tqdm(grid, desc=f"convert {sid}", unit="tile", leave=False):
        y1, x1 = min(slide.height, y + T), min(slide.width, x + T)
        lab = labels(y, y1, x, x1, y // ds, x // ds)
        t = tissue[y // thumb_f:-(-y1 // thumb_f), x // thumb_f:-(-x1 // thumb_f)]
        if t.mean() < 0.01 and not lab.any():
            continue
        img = area_downscale(slide.region(y, y1, x, x1), ds, 255)
        case = f"{sid}_y{y // ds:05d}_x{x // ds:05d}"
        write(case, np.round(img).astype(np.uint8), lab)
        cases.append({"case": case, "box_full_res": [y, y1, x, x1], "tissue_fraction": round(float(t.mean()), 3),
                      "foreground_pixels": int((lab > 0).sum())})
    return cases


def patient_folds(meta: dict) -> list[dict]:
    """Leave-one-patient-out folds over the training slides' tiles."""
    groups: dict[str, list[str]] = {}
    for k in meta["kidneys"].values():
        if k["split"] == "train":
            groups.setdefault(str(k["physical_kidney"]), []).extend(c["case"] for c in k["cases"])
    return leave_one_group_out(groups)


def _read_train_csv(path: Path) -> dict[str, str]:
    """``train.csv`` -> {slide id: encoding}; one row per slide (a repeated id is refused)."""
    from nnunet_vasculature.io.tables import read_table
    return {r["id"]: r["encoding"] or "" for r in read_table(path, ("id", "encoding"), competition="hubmap-kidney")}


def convert_hubmap_kidney(kaggle_dir: Path, dataset_id: int, name: str = "HuBMAPKidney", raw_root: Path | None = None,
                          downscale: int = 4, classes: tuple[str, ...] = ("glomerulus",), tile: int = 512,
                          overwrite: bool = False, pseudo: dict[str, Path] | None = None,
                          foreign_probabilities: bool = False) -> Path:
    """Write ``<raw_root>/DatasetXXX_<name>``; returns that folder.

    ``pseudo`` maps test slide ids to ``predict hubmap-kidney`` stores; ``foreign_probabilities`` reads stores
    without predict's record (as :func:`~nnunet_vasculature.io.store.open_slide_probabilities`).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from skimage.io import imsave

    from nnunet_vasculature.dataset_conversion.splits import install_splits
    kaggle_dir = Path(kaggle_dir)
    raw_root = Path(raw_root) if raw_root else nnunet_folder("nnUNet_raw", "pass -o RAW_ROOT")
    unhealthy = "unhealthy" in classes
    if [c for c in classes if c not in ("glomerulus", "unhealthy")] or "glomerulus" not in classes:
        raise UserError(f"--classes {' '.join(classes)}: choose 'glomerulus' or 'glomerulus unhealthy'")
    ds_name = f"Dataset{dataset_id:03d}_{name}"
    clash = [p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != ds_name and p.is_dir()]
    if clash:
        raise UserError(f"{clash[0]}: dataset ID {dataset_id} is already used by another name")
    info = read_info(kaggle_dir)
    slides = sorted((kaggle_dir / "train").glob("*.tiff"))
    if not slides:
        raise UserError(f"{kaggle_dir / 'train'}: no .tiff slides")
    rles = None if unhealthy else _read_train_csv(kaggle_dir / "train.csv")
    jobs = []     # (slide id, tiff, mask source description)
    for p in slides:
        sid = p.stem
        if sid not in info:
            raise UserError(f"{kaggle_dir / INFO_CSV}: no row for slide {p.name}")
        if rles is not None and sid not in rles:
            raise UserError(f"{kaggle_dir / 'train.csv'}: no mask for slide {p}")
        if unhealthy and not p.with_suffix(".json").is_file():
            raise UserError(f"{p.with_suffix('.json')}: missing (no polygons for slide {p.name})")
        jobs.append((sid, p, "train"))
    for sid, store in (pseudo or {}).items():
        p = kaggle_dir / "test" / f"{sid}.tiff"
        if not p.is_file() or sid not in info:
            raise UserError(f"{p}: --pseudo names no test slide of {kaggle_dir}")
        jobs.append((sid, p, str(store)))
    pseudo_fns: dict[str, MaskFn] = {}
    for sid, path, source in jobs:          # every header, RLE and store checked before anything is written
        with Slide(path, info[sid]["height"], info[sid]["width"]):
            pass
        if source == "train" and not unhealthy:
            rle_region_fn(rles[sid], info[sid]["height"], info[sid]["width"], f"{kaggle_dir / 'train.csv'} (id {sid})")
        elif source != "train":
            pseudo_fns[sid] = store_region_fn(Path(source), info[sid]["height"], info[sid]["width"],
                                              foreign_probabilities=foreign_probabilities)
    meta: dict = {"source": str(kaggle_dir.resolve()), "downscale": downscale, "tile": tile,
                  "classes": list(classes),
                  "note": "'kidneys' are slides; 'physical_kidney' is the patient: leave-one-patient-out folds",
                  "kidneys": {}}
    with atomic_dir(raw_root / ds_name, overwrite) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()

        def write(case: str, img: np.ndarray, lab: np.ndarray) -> None:
            imsave(tmp / "imagesTr" / f"{case}_0000.png", img, check_contrast=False)
            imsave(tmp / "labelsTr" / f"{case}.png", lab, check_contrast=False)
        n = 0
        for sid, path, source in tqdm(jobs, desc="slides", unit="slide"):
            row = info[sid]
            with Slide(path, row["height"], row["width"]) as slide:
                if source == "train" and not unhealthy:
                    full = rle_region_fn(rles[sid], slide.height, slide.width, f"{kaggle_dir / 'train.csv'} (id {sid})")
                elif source == "train":
                    polys = read_polygons(path.with_suffix(".json"), True)
                    full = None
                else:
                    full = pseudo_fns[sid]

                def labels(y0: int, y1: int, x0: int, x1: int, Y: int, X: int, full: MaskFn | None = full,
                           polys: list = polys if full is None else []) -> np.ndarray:
                    shape = (-(-(y1 - y0) // downscale), -(-(x1 - x0) // downscale))
                    if full is None:
                        return polygon_labels(polys, Y, X, shape, downscale)
                    return (area_downscale(full(y0, y1, x0, x1), downscale) >= 0.5).astype(np.uint8)
                cases = convert_slide(slide, labels, downscale, tile, write, sid)
            n += len(cases)
            meta["kidneys"][sid] = {"split": "train", "physical_kidney": row["patient"], "source": source,
                                    "shape": [row["height"], row["width"]], "cases": cases}
        if n == 0:
            raise UserError(f"{kaggle_dir}: no tissue found in any training slide")
        generate_dataset_json(
            str(tmp), channel_names={0: CHANNEL_NAME, 1: CHANNEL_NAME, 2: CHANNEL_NAME},
            labels={"background": 0, "glomerulus": 1, **({"unhealthy": 2} if unhealthy else {})},
            num_training_cases=n, file_ending=".png", overwrite_image_reader_writer="NaturalImage2DIO",
            dataset_name=ds_name, description=f"HuBMAP Hacking the Kidney glomeruli, {downscale}x downscaled "
            f"tissue tiles of {tile} px (channels R, G, B divided by 255)",
            reference="https://www.kaggle.com/competitions/hubmap-kidney-segmentation",
            license="see the competition rules", converted_by="nnunet-vasculature", downscale=downscale)
        (tmp / CASES_FILE).write_text(json.dumps(meta, indent=1))
        (tmp / "splits_final.json").write_text(json.dumps(patient_folds(meta), indent=1))
    final = raw_root / ds_name
    print(f"wrote {final} ({n} training cases from {len(jobs)} slides)")
    install_splits(final)
    return final


def _parse_pseudo(items: list[str] | None) -> dict[str, Path]:
    out = {}
    for it in items or []:
        sid, sep, store = it.partition("=")
        if not sep or not sid or not store:
            raise UserError(f"--pseudo {it}: expected SLIDE_ID=PROBABILITY_STORE")
        out[sid] = Path(store)
    return out


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``convert {competition}``."""
    sub = groups["convert"]
    p = sub.add_parser("hubmap-kidney", help="HuBMAP Hacking the Kidney slides -> nnU-Net raw (2D)")
    p.add_argument("kaggle_dir", type=Path, help="the unpacked hubmap-kidney-segmentation download")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID")
    p.add_argument("-o", dest="raw_root", type=Path, help="raw root (default $nnUNet_raw)")
    p.add_argument("-n", dest="name", default="HuBMAPKidney", help="dataset name (default HuBMAPKidney)")
    p.add_argument("--downscale", type=int, choices=(1, 2, 3, 4, 8), default=4,
                   help="area downscaling of the slides (default 4; the winners used 2-4)")
    p.add_argument("--tile", type=int, default=512, help="case tile size in downscaled pixels (default 512)")
    p.add_argument("--classes", nargs="+", default=["glomerulus"],
                   help="'glomerulus' (masks from train.csv) or 'glomerulus unhealthy' (from the polygon JSONs, "
                        "a second class for unhealthy glomeruli)")
    p.add_argument("--pseudo", nargs="+", metavar="ID=STORE",
                   help="test slides to add with pseudo-labels from `predict hubmap-kidney` probability stores "
                        "(>= 0.5)")
    add_foreign_flag(p, "a --pseudo " + SLIDE_OUTPUT.removeprefix("a "))
    p.add_argument("--overwrite", action="store_true")

    def run(a: argparse.Namespace) -> None:
        convert_hubmap_kidney(a.kaggle_dir, a.dataset_id, a.name, a.raw_root, a.downscale, tuple(a.classes),
                              a.tile, a.overwrite, _parse_pseudo(a.pseudo), a.foreign_probabilities)
    p.set_defaults(func=run)
