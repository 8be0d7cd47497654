"""Synthetic PAS kidney slides in the exact layout of the Kaggle download ``hubmap-kidney-segmentation``.

``train/`` and ``test/`` hold ``<id>.tiff``, ``<id>.json`` (glomerulus polygons, GeoJSON-like features
with ``properties.classification.name`` "glomerulus" or "unhealthy") and
``<id>-anatomical-structure.json`` (cortex / medulla); ``train.csv`` (``id,encoding``, column-major RLE),
``HuBMAP-20-dataset_information.csv``, ``sample_submission.csv`` (``id,predicted``) and, not part of the
download, ``solution.csv`` (``id,encoding,width,height``: the hidden test masks). The slides use the
real TIFF oddities in turn: tiled (H, W, 3), (1, 1, 3, H, W), channel-first (3, H, W), one page per band.

Glomeruli are a purple tuft with nuclei inside a pale Bowman's space and a thin capsule (the annotated
outline); unhealthy (sclerotic) ones are a uniform magenta disk. Tissue is pink with texture and noise
on white glass. ``--scale full`` writes one training slide of real size tile by tile.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from nnunet_vasculature.errors import atomic_dir
from nnunet_vasculature.io.rle import ColumnStripEncoder, rle_encode
from nnunet_vasculature.io.slide import INFO_CSV
from nnunet_vasculature.synthetic.common import write_csv

LAYOUTS = ("hwc_tiled", "5d", "chw", "bands", "hwc_strips")
TILE = 512
FULL_SHAPE = (25000, 34000)    # (height, width) of the --scale full slide, like the smaller real slides


class SlideSpec:
    """Geometry of one synthetic slide: tissue outline, glomeruli, colours; renders any region."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, radius: tuple[float, float]):
        self.height, self.width = height, width
        self.cy, self.cx = height * rng.uniform(0.45, 0.55), width * rng.uniform(0.45, 0.55)
        self.ry, self.rx = height * rng.uniform(0.36, 0.44), width * rng.uniform(0.36, 0.44)
        self.harm = rng.uniform(-0.08, 0.08, (2, 6))          # wobbly tissue outline (polar harmonics)
        self.waves = rng.uniform(0, 2 * np.pi, (4, 3)) * [1, 1, 1]
        self.wave_len = rng.uniform(40, 200, 4) * max(1.0, radius[0] / 30)
        self.tint = rng.uniform(-15, 15, 3)
        self.seed = int(rng.integers(2 ** 31))
        self.glomeruli = self._place(rng, radius)

    def _outline(self, n: int = 180) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        k = np.arange(1, 7)
        r = 1 + (self.harm[0] * np.cos(np.outer(t, k)) + self.harm[1] * np.sin(np.outer(t, k))).sum(1)
        return np.stack([self.cx + self.rx * r * np.cos(t), self.cy + self.ry * r * np.sin(t)], 1)   # [x, y]

    def _inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = np.arctan2((y - self.cy) / self.ry, (x - self.cx) / self.rx)
        k = np.arange(1, 7)
        tk = np.multiply.outer(t, k)
        r = 1 + (self.harm[0] * np.cos(tk) + self.harm[1] * np.sin(tk)).sum(-1)
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= r ** 2

    def _place(self, rng: np.random.Generator, radius: tuple[float, float]) -> list[dict]:
        n_target = int(0.045 * np.pi * self.rx * self.ry / (np.pi * np.mean(radius) ** 2))
        out: list[dict] = []
        for _ in range(n_target * 20):
            if len(out) >= n_target:
                break
            r = rng.uniform(*radius)
            x, y = rng.uniform(r, self.width - r), rng.uniform(r, self.height - r)
            if not self._inside(np.array(x - 1.3 * r * np.sign(x - self.cx)), np.array(y)) or \
                    not self._inside(np.array(x), np.array(y - 1.3 * r * np.sign(y - self.cy))):
                continue
            if any((g["x"] - x) ** 2 + (g["y"] - y) ** 2 < (1.3 * (g["r"] + r)) ** 2 for g in out):
                continue
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            rr = r * (1 + rng.uniform(-0.06, 0.06, 24))
            poly = np.stack([x + rr * np.cos(t), y + rr * np.sin(t)], 1)
            out.append({"x": x, "y": y, "r": r, "poly": poly, "unhealthy": bool(rng.random() < 0.15)})
        return out

    def mask(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Glomerulus mask (uint8 0/1) of a region: the polygons rasterised (pixel centres inside)."""
        from skimage.draw import polygon
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for g in self._near(y0, y1, x0, x1):
            rr, cc = polygon(g["poly"][:, 1] - y0, g["poly"][:, 0] - x0, shape=m.shape)
            m[rr, cc] = 1
        return m

    def _near(self, y0: int, y1: int, x0: int, x1: int) -> list[dict]:
        return [g for g in self.glomeruli if g["x"] + 1.1 * g["r"] >= x0 and g["x"] - 1.1 * g["r"] < x1
                and g["y"] + 1.1 * g["r"] >= y0 and g["y"] - 1.1 * g["r"] < y1]

    def render(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint8 RGB pixels of [y0, y1) x [x0, x1): tissue, texture and glomeruli are functions of the position;
        the noise and the nuclei are drawn from a generator seeded by the slide and the region's corner."""
        rng = np.random.default_rng([self.seed, y0, x0])
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        tissue = self._inside(xx, yy)
        tex = np.zeros(yy.shape, np.float32)
        for (a, p, _), lam in zip(self.waves, self.wave_len):
            tex += np.sin((np.cos(a) * xx + np.sin(a) * yy) * (2 * np.pi / lam) + p)
        img = np.empty(yy.shape + (3,), np.float32)
        pink = np.array([222, 160, 200], np.float32) + self.tint
        img[:] = 242
        img[tissue] = pink + (tex[tissue, None] * np.array([7, 14, 9], np.float32))
        lumen = tissue & (tex > 2.2)                                        # pale tubule lumens
        img[lumen] = [236, 214, 230]
        for g in self._near(y0, y1, x0, x1):                  # drawn in each glomerulus's bounding box
            a0, a1 = max(y0, int(g["y"] - g["r"]) - 1), min(y1, int(g["y"] + g["r"]) + 2)
            b0, b1 = max(x0, int(g["x"] - g["r"]) - 1), min(x1, int(g["x"] + g["r"]) + 2)
            if a0 >= a1 or b0 >= b1:
                continue
            box = img[a0 - y0:a1 - y0, b0 - x0:b1 - x0]
            d = np.hypot(xx[a0 - y0:a1 - y0, b0 - x0:b1 - x0] - g["x"], yy[a0 - y0:a1 - y0, b0 - x0:b1 - x0] - g["y"])
            d /= g["r"]
            if g["unhealthy"]:
                box[d < 0.97] = [205, 105, 170]
            else:
                box[(d >= 0.80) & (d < 0.97)] = [240, 226, 238]                # Bowman's space
                box[(d >= 0.94) & (d < 1.0)] = [185, 110, 165]                 # capsule
                tuft = d < 0.80
                box[tuft] = [150, 78, 150]
                nuclei = tuft & (rng.random(tuft.shape) < 0.08)
                box[nuclei] = [80, 40, 110]
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    def features(self) -> list[dict]:
        out = []
        for i, g in enumerate(self.glomeruli):
            ring = [[round(float(x), 1), round(float(y), 1)] for x, y in g["poly"]]
            ring.append(ring[0])
            geom = ({"type": "MultiPolygon", "coordinates": [[ring]]} if i % 7 == 3
                    else {"type": "Polygon", "coordinates": [ring]})
            name = "unhealthy" if g["unhealthy"] else "glomerulus"
            out.append({"type": "Feature", "id": "PathAnnotationObject", "geometry": geom,
                        "properties": {"classification": {"name": name, "colorRGB": -3140401},
                                       "isLocked": False, "measurements": []}})
        return out

    def anatomy(self) -> list[dict]:
        outer = [[round(float(x), 1), round(float(y), 1)] for x, y in self._outline()]
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        inner = [[round(float(self.cx + 0.45 * self.rx * np.cos(a)), 1),
                  round(float(self.cy + 0.45 * self.ry * np.sin(a)), 1)] for a in t]
        return [{"type": "Feature", "id": "PathAnnotationObject",
                 "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
                 "properties": {"classification": {"name": name, "colorRGB": -16711936}, "isLocked": False,
                                "measurements": []}}
                for name, ring in (("Cortex", outer), ("Medulla", inner))]


def write_tiff(path: Path, rgb: np.ndarray, layout: str) -> None:
    """Write an RGB slide in one of the layouts seen in the Kaggle download."""
    import tifffile
    if layout == "hwc_tiled":
        tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    elif layout == "hwc_strips":
        tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=64)
    elif layout == "5d":
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0)[None, None], photometric="minisblack")
    elif layout == "chw":
        tifffile.imwrite(path, np.ascontiguousarray(np.moveaxis(rgb, -1, 0)), photometric="minisblack",
                         planarconfig="separate", metadata=None)
    elif layout == "bands":
        with tifffile.TiffWriter(path) as w:
            for c in range(3):
                w.write(np.ascontiguousarray(rgb[..., c]), photometric="minisblack")
    else:
        raise ValueError(layout)


def _tiles(spec: SlideSpec) -> Iterator[np.ndarray]:
    for y in range(0, spec.height, TILE):
        for x in range(0, spec.width, TILE):
            yield spec.render(y, y + TILE, x, x + TILE)


def write_full_slide(path: Path, spec: SlideSpec) -> str:
    """Write a big slide tile by tile (tifffile's tiled write from a generator) and return its
    column-major RLE, rasterised strip by strip: neither the image nor the mask is ever whole in memory."""
    import tifffile
    from tqdm import tqdm
    n = -(-spec.height // TILE) * -(-spec.width // TILE)
    tiles = (t for t in tqdm(_tiles(spec), total=n, desc=f"write {path.name}", unit="tile"))  # a generator
    tifffile.imwrite(path, tiles, shape=(spec.height, spec.width, 3), dtype=np.uint8, tile=(TILE, TILE),
                     photometric="rgb", bigtiff=True)
    enc = ColumnStripEncoder(spec.height, empty="")
    for x in range(0, spec.width, 2048):
        enc.add(spec.mask(0, spec.height, x, min(spec.width, x + 2048)))
    return enc.finish()


def synthesize(out: Path, seed: int = 0, scale: str = "small", overwrite: bool = False, n_train: int = 6,
               n_test: int = 2, size: int = 1600, full_shape: tuple[int, int] = FULL_SHAPE) -> Path:
    """Write the download layout to ``out``; returns ``out``."""
    rng = np.random.default_rng(seed)
    patients = [str(p) for p in rng.integers(60000, 70000, max(2, (n_train + 1) // 2))]
    radius = (size / 60, size / 38)
    with atomic_dir(Path(out), overwrite) as tmp:
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        info, train_rows, sol_rows = [], [], []
        for i in range(n_train + n_test):
            split = "train" if i < n_train else "test"
            sid = "".join(rng.choice(list("0123456789abcdef"), 9))
            full = scale == "full" and i == 0
            h, w = full_shape if full else (int(size * rng.uniform(0.85, 1.1)), int(size * rng.uniform(1.0, 1.3)))
            spec = SlideSpec(rng, h, w, (110.0, 170.0) if full else radius)
            path = tmp / split / f"{sid}.tiff"
            if full:
                rle = write_full_slide(path, spec)
            else:
                write_tiff(path, spec.render(0, h, 0, w), LAYOUTS[i % len(LAYOUTS)])
                rle = rle_encode(spec.mask(0, h, 0, w), order="F", empty="")
            (tmp / split / f"{sid}.json").write_text(json.dumps(spec.features(), indent=1))
            (tmp / split / f"{sid}-anatomical-structure.json").write_text(json.dumps(spec.anatomy(), indent=1))
            (train_rows if split == "train" else sol_rows).append((sid, rle, w, h))
            info.append({"image_file": f"{sid}.tiff", "glomerulus_segmentation_file": f"{sid}.json",
                         "anatomical_structures_segmention_file": f"{sid}-anatomical-structure.json",
                         "patient_number": patients[min(i // 2, len(patients) - 1)] if split == "train"
                         else str(70000 + i), "race": "White", "ethnicity": "Not Hispanic or Latino",
                         "sex": "Male", "age": 50 + i, "weight_kilograms": 80, "height_centimeters": 175,
                         "bmi_kg/m^2": 26.1, "laterality": "Left", "percent_cortex": 80, "percent_medulla": 20,
                         "width_pixels": w, "height_pixels": h})
        write_csv(tmp / "train.csv", ("id", "encoding"), [r[:2] for r in train_rows])
        write_csv(tmp / "sample_submission.csv", ("id", "predicted"), [(r[0], "") for r in sol_rows])
        write_csv(tmp / "solution.csv", ("id", "encoding", "width", "height"), sol_rows)
        write_csv(tmp / INFO_CSV, tuple(info[0]), [tuple(r.values()) for r in info])
    print(f"wrote {out}: {n_train} train and {n_test} test slides")
    return Path(out)


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``synthesize {competition}``."""
    sub = groups["synthesize"]
    p = sub.add_parser("hubmap-kidney", help="synthetic PAS slides in the Kaggle hubmap-kidney-segmentation layout")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output folder (the download's root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=("small", "full"), default="small",
                   help=f"small: ~1600 px slides; full: the first train slide is {FULL_SHAPE[1]} x {FULL_SHAPE[0]} px, "
                        f"written tile by tile (~2.5 GB)")
    p.add_argument("--overwrite", action="store_true")

    def run(a: argparse.Namespace) -> None:
        synthesize(a.output, a.seed, a.scale, a.overwrite)
    p.set_defaults(func=run)
