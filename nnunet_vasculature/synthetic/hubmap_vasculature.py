"""Synthetic HuBMAP Hacking the Human Vasculature tiles in the Kaggle layout (DOMAIN §8).

Writes ``train/<id>.tif`` (512×512×3 uint8), ``polygons.jsonl``, ``tile_meta.csv``
(``id,source_wsi,dataset,i,j``), ``wsi_meta.csv``, ``test/<id>.tif``, ``sample_submission.csv`` and the
hidden test truth: ``solution.csv`` (``id,height,width,annotations``: the vessel masks in the submission
encoding, space-joined) and ``test_polygons.jsonl``. The texture is PAS/H&E-like (pink stroma, purple
nuclei, pale tubule lumens); vessels are elliptic pale lumens with red cells in a darker wall, glomeruli
dense purple tufts with a white Bowman space and unannotated capillary lumens inside. Dataset 1 (WSIs 1–2)
is annotated completely (a few vessels as ``unsure``); dataset 2 (WSIs 1–4) sparsely, with outlines shrunk
towards the centre and some exact duplicate polygons; dataset 3 (WSIs 6–7) has no annotations.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import atomic_dir

TILE = 512
WSI_META = [(1, 58, "F", "Black or African American", 160.0, 59.0, 23.0),
            (2, 56, "F", "White", 175.2, 139.6, 45.5), (3, 73, "F", "White", 162.3, 87.5, 33.2),
            (4, 53, "M", "Black or African American", 166.0, 73.0, 26.5),
            (6, 64, "M", "White", 180.3, 104.3, 32.1), (7, 71, "M", "White", 177.8, 86.2, 27.3)]


def _ellipse(cx: float, cy: float, a: float, b: float, theta: float, n: int = 32) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _fill(poly: np.ndarray) -> np.ndarray:
    from skimage.draw import polygon
    m = np.zeros((TILE, TILE), bool)
    rr, cc = polygon(poly[:, 1], poly[:, 0], m.shape)
    m[rr, cc] = True
    return m


def _ring(poly: np.ndarray) -> list[list[int]]:
    """Integer [x, y] vertices inside the tile, as the Kaggle polygons are."""
    p = np.clip(np.round(poly), 0, TILE - 1).astype(int)
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(p[1:] != p[:-1], axis=1)
    return p[keep].tolist()


def _tile(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One tile and its annotations (all vessels and glomeruli, complete outlines)."""
    from scipy.ndimage import gaussian_filter
    low = gaussian_filter(rng.normal(size=(TILE, TILE)), 24) * 6
    mid = gaussian_filter(rng.normal(size=(TILE, TILE)), 2)
    img = np.empty((TILE, TILE, 3), np.float32)
    stain = np.array([228, 170, 200], np.float32) + rng.normal(0, 6, 3)
    img[:] = stain + (low / max(np.abs(low).max(), 1e-6) * 12)[..., None] + (mid * 60)[..., None]
    occupied = np.zeros((TILE, TILE), bool)
    anns: list[dict] = []
    yy, xx = np.mgrid[:TILE, :TILE]
    for _ in range(rng.integers(0, 3)):                           # glomeruli
        r = rng.uniform(38, 62)
        cx, cy = rng.uniform(20, TILE - 20, 2)
        outer = _ellipse(cx, cy, r + 4, r + 4, 0.0, 48)
        tuft = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        img[_fill(outer)] = (245, 238, 244)                       # Bowman space
        img[tuft] = np.array([165, 100, 170]) + (mid[tuft] * 50)[:, None]
        for _ in range(rng.integers(3, 7)):                       # capillary lumens: not annotated vessels
            a = rng.uniform(3, 7)
            px, py = cx + rng.uniform(-r / 2, r / 2), cy + rng.uniform(-r / 2, r / 2)
            img[(xx - px) ** 2 + (yy - py) ** 2 < a ** 2] = (240, 232, 238)
        occupied |= _fill(_ellipse(cx, cy, r + 10, r + 10, 0.0, 48))
        anns.append({"type": "glomerulus", "coordinates": [_ring(outer)]})
    for _ in range(rng.integers(4, 9)):                           # tubules (distractors)
        cx, cy = rng.uniform(0, TILE, 2)
        a = rng.uniform(14, 26)
        m = (xx - cx) ** 2 + (yy - cy) ** 2 < a ** 2
        if (m & occupied).any():
            continue
        img[m] = np.array([215, 140, 190]) + (mid[m] * 40)[:, None]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (a * 0.3) ** 2] = (236, 215, 228)
    n_vessels, placed, tries = int(rng.integers(3, 10)), 0, 0
    while placed < n_vessels and tries < 200:
        tries += 1
        a = rng.uniform(7, 30)
        b = a * rng.uniform(0.45, 1.0)
        theta = rng.uniform(0, np.pi)
        if anns and anns[-1]["type"] == "blood_vessel" and rng.random() < 0.2:
            px, py = np.mean(anns[-1]["coordinates"][0], axis=0)  # a touching neighbour
            ang = rng.uniform(0, 2 * np.pi)
            cx, cy = px + np.cos(ang) * (a + 10), py + np.sin(ang) * (a + 10)
        else:
            cx, cy = rng.uniform(-10, TILE + 10, 2)
        outer = _ellipse(cx, cy, a, b, theta)
        m = _fill(outer)
        if m.sum() < 40 or (m & occupied).mean() > 0 and (m & occupied).sum() > 0.1 * m.sum():
            continue
        wall = rng.uniform(2, 5)
        lumen = _fill(_ellipse(cx, cy, max(a - wall, 2), max(b - wall, 1.5), theta))
        img[m] = np.array([185, 95, 140]) + (mid[m] * 40)[:, None]
        img[lumen] = np.array([244, 236, 240]) + (mid[lumen] * 15)[:, None]
        cells = lumen & (rng.random((TILE, TILE)) < 0.04)
        img[cells] = (205, 70, 95)
        occupied |= m
        anns.append({"type": "blood_vessel", "coordinates": [_ring(outer)]})
        placed += 1
    nuclei = (rng.random((TILE, TILE)) < 0.0025) & ~occupied
    dots = gaussian_filter(nuclei.astype(np.float32), 1.3) * 25
    img -= np.clip(dots, 0, 1)[..., None] * np.array([110, 120, 40])
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), anns


def _sparse(anns: list[dict], rng: np.random.Generator) -> list[dict]:
    """Dataset 2: ~40 % of vessels missing, outlines shrunk by 10–15 %, some exact duplicates."""
    out = []
    for a in anns:
        if a["type"] == "blood_vessel" and rng.random() < 0.4:
            continue
        p = np.asarray(a["coordinates"][0], float)
        c = p.mean(0)
        s = rng.uniform(0.85, 0.9)
        ring = {"type": a["type"], "coordinates": [_ring(c + (p - c) * s)]}
        out.append(ring)
        if rng.random() < 0.15:
            out.append(json.loads(json.dumps(ring)))
    return out


def synthesize(out: Path, seed: int = 0, n_tiles: int = 16, overwrite: bool = False) -> Path:
    """Write the Kaggle layout to ``out``; ``n_tiles`` dataset-1 tiles (and 3/4 as many of dataset 2, a
    quarter of dataset 3, a quarter as test tiles, at least 2 each). Returns ``out``."""
    from nnunet_vasculature.io.coco_rle import encode_masks
    rng = np.random.default_rng(seed)
    plan = [(1, 1 + k % 2) for k in range(n_tiles)]
    plan += [(2, 1 + k % 4) for k in range(max(2, 3 * n_tiles // 4))]
    plan += [(3, 6 + k % 2) for k in range(max(2, n_tiles // 4))]
    n_test = max(2, n_tiles // 4)
    ids = set()

    def new_id() -> str:
        while True:
            i = rng.bytes(6).hex()
            if i not in ids:
                ids.add(i)
                return i
    with atomic_dir(Path(out), overwrite) as tmp:
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        meta, polys, positions = [], [], {}
        for ds, wsi in tqdm(plan, desc="synthesize tiles", leave=False):
            tid = new_id()
            img, anns = _tile(rng)
            tifffile.imwrite(tmp / "train" / f"{tid}.tif", img)
            k = positions[wsi] = positions.get(wsi, 0) + 1
            meta.append((tid, wsi, ds, 512 * (k % 37) + 1024, 512 * (k // 37) + 2048))
            if ds == 1:
                for a in anns:
                    if a["type"] == "blood_vessel" and rng.random() < 0.06:
                        a["type"] = "unsure"
                polys.append({"id": tid, "annotations": anns})
            elif ds == 2:
                polys.append({"id": tid, "annotations": _sparse(anns, rng)})
        with open(tmp / "tile_meta.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "source_wsi", "dataset", "i", "j"])
            w.writerows(meta)
        with open(tmp / "polygons.jsonl", "w") as f:
            for p in polys:
                f.write(json.dumps(p) + "\n")
        with open(tmp / "wsi_meta.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["source_wsi", "age", "sex", "race", "height", "weight", "bmi"])
            w.writerows(WSI_META)
        sample, solution, test_polys = [], [], []
        for k in range(n_test):
            tid = new_id()
            img, anns = _tile(rng)
            tifffile.imwrite(tmp / "test" / f"{tid}.tif", img)
            vessels = [a for a in anns if a["type"] == "blood_vessel"]
            masks = np.stack([_fill(np.asarray(a["coordinates"][0], float)) | _outline(a) for a in vessels]) \
                if vessels else np.zeros((0, TILE, TILE), bool)
            solution.append((tid, TILE, TILE, " ".join(encode_masks(masks))))
            test_polys.append({"id": tid, "annotations": anns})
            sample.append((tid, TILE, TILE, "0 1.0 " + encode_masks(np.ones((1, TILE, TILE), bool))[0]))
        for name, rows, cols in (("sample_submission.csv", sample, ["id", "height", "width", "prediction_string"]),
                                 ("solution.csv", solution, ["id", "height", "width", "annotations"])):
            with open(tmp / name, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(cols)
                w.writerows(rows)
        with open(tmp / "test_polygons.jsonl", "w") as f:
            for p in test_polys:
                f.write(json.dumps(p) + "\n")
    return Path(out)


def _outline(ann: dict) -> np.ndarray:
    from skimage.draw import polygon_perimeter
    p = np.asarray(ann["coordinates"][0])
    m = np.zeros((TILE, TILE), bool)
    rr, cc = polygon_perimeter(p[:, 1], p[:, 0], m.shape)
    m[rr, cc] = True
    return m


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``synthesize {competition}``."""
    sub = groups["synthesize"]
    p = sub.add_parser("hubmap-vasculature", help="synthetic 512x512 tiles in the HuBMAP vasculature Kaggle layout")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (Kaggle layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_tiles", type=int, default=16,
                   help="dataset-1 tiles (dataset 2: 3/4 as many, dataset 3 and test: 1/4; default 16)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=lambda a: print(f"wrote {synthesize(a.output, a.seed, a.n_tiles, a.overwrite)}"))
