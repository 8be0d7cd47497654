"""Whole-slide TIFFs (HuBMAP Hacking the Kidney) read region by region, whatever their layout.

The Kaggle slides come as (H, W, 3), (1, 1, 3, H, W), channel-first (3, H, W), or one page / series
per colour band. ``Slide`` opens the TIFF's zarr view (``tifffile.imread(..., aszarr=True)``), so a
region read decodes only the TIFF tiles or strips it touches, never the whole slide. Width and height
are checked against the dataset information CSV (the truth). ``tissue_mask`` finds tissue on a
thumbnail by HSV saturation (white glass and black padding are unsaturated).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile

from nnunet_vasculature.errors import UserError

INFO_CSV = "HuBMAP-20-dataset_information.csv"


class Slide:
    """An RGB slide of ``height`` x ``width`` pixels; ``region(y0, y1, x0, x1)`` -> uint8 (h, w, 3)."""

    def __init__(self, path: Path | str, height: int | None = None, width: int | None = None):
        import tifffile
        import zarr
        self.path = Path(path)
        self._stores = []
        try:
            with tifffile.TiffFile(self.path) as tif:
                shapes = [tuple(s.shape) for s in tif.series]
                dtypes = [s.dtype for s in tif.series]
            if not shapes:
                raise ValueError("no image series")
            first = _squeeze(shapes[0])
            if len(first) == 2 and len(shapes) >= 3 and all(_squeeze(s) == first for s in shapes[:3]):
                series, self.layout = [0, 1, 2], "bands"              # one series per colour band
            elif len(first) == 3 and first[-1] in (3, 4):
                series, self.layout = [0], "hwc"
            elif len(first) == 3 and first[0] in (3, 4):
                series, self.layout = [0], "chw"
            else:
                raise ValueError(f"unsupported layout {shapes[0]} ({len(shapes)} series)")
            if dtypes[0] != np.uint8:
                raise ValueError(f"pixel type {dtypes[0]}, expected uint8 RGB")
            self.arrays = []
            for k in series:
                store = tifffile.imread(self.path, aszarr=True, series=k, level=0)
                self._stores.append(store)
                self.arrays.append(zarr.open(store, mode="r"))
        except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError) as e:
            self.close()
            raise UserError(f"{self.path}: cannot read as a slide TIFF ({type(e).__name__}: {e})") from None
        hw = first[:2] if self.layout in ("hwc", "bands") else first[1:]
        self.height, self.width = int(hw[0]), int(hw[1])
        if height is not None and width is not None and (self.height, self.width) != (int(height), int(width)):
            self.close()
            raise UserError(f"{self.path}: TIFF is {self.width} x {self.height} px (width x height) but "
                            f"{INFO_CSV} says {int(width)} x {int(height)}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) (clipped to the slide) as uint8 (h, w, 3); a part of the file that cannot be
        decoded (a truncated or corrupt slide) is a one-line UserError naming the file and the region."""
        try:
            return self._region(y0, y1, x0, x1)
        except (OSError, ValueError, RuntimeError, tifffile.TiffFileError) as e:
            raise UserError(f"{self.path}: region y {y0}..{y1}, x {x0}..{x1} cannot be read, the file is truncated "
                            f"or corrupt ({type(e).__name__}: {e})") from None

    def _region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        y0, y1 = max(0, y0), min(self.height, y1)
        x0, x1 = max(0, x0), min(self.width, x1)
        lead = (0,) * (self.arrays[0].ndim - (2 if self.layout == "bands" else 3))
        if self.layout == "bands":
            return np.stack([np.asarray(a[lead + (slice(y0, y1), slice(x0, x1))]) for a in self.arrays], -1)
        a = self.arrays[0]
        if self.layout == "hwc":
            return np.asarray(a[lead + (slice(y0, y1), slice(x0, x1), slice(0, 3))])
        return np.moveaxis(np.asarray(a[lead + (slice(0, 3), slice(y0, y1), slice(x0, x1))]), 0, -1)

    def thumbnail(self, factor: int, block: int = 4096) -> np.ndarray:
        """Every ``factor``-th pixel (uint8 (ceil(H/f), ceil(W/f), 3)), read in ``block``-sized regions."""
        block = max(factor, block // factor * factor)
        out = np.zeros((-(-self.height // factor), -(-self.width // factor), 3), np.uint8)
        for y in range(0, self.height, block):
            for x in range(0, self.width, block):
                r = self.region(y, y + block, x, x + block)[::factor, ::factor]
                out[y // factor:y // factor + r.shape[0], x // factor:x // factor + r.shape[1]] = r
        return out

    def close(self) -> None:
        for s in self._stores:
            s.close()
        self._stores = []

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _squeeze(shape: tuple) -> tuple:
    """Drop leading singleton axes: (1, 1, 3, H, W) -> (3, H, W)."""
    shape = tuple(shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.08, min_value: int = 40) -> np.ndarray:
    """Tissue pixels of an RGB thumbnail: HSV saturation above ``min_saturation`` and not black padding,
    then a 3 x 3 binary opening: the thumbnail samples single pixels, and the noise of the glass makes a few
    percent of its pixels saturated enough; isolated ones are dropped (tissue thinner than 3 thumbnail
    pixels goes with them)."""
    from scipy import ndimage
    rgb = np.asarray(rgb)
    mx = rgb.max(-1).astype(np.int16)
    mn = rgb.min(-1).astype(np.int16)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0.0)
    return ndimage.binary_opening((sat > min_saturation) & (mx > min_value), np.ones((3, 3), bool))


def area_downscale(a: np.ndarray, ds: int, pad_value: int = 0) -> np.ndarray:
    """Mean over ds x ds blocks of a (h, w[, c]) array; edges padded with ``pad_value`` to a multiple of ds."""
    h, w = a.shape[:2]
    H, W = -(-h // ds) * ds, -(-w // ds) * ds
    if (H, W) != (h, w):
        pad = [(0, H - h), (0, W - w)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, constant_values=pad_value)
    b = a.reshape(H // ds, ds, W // ds, ds, *a.shape[2:]).astype(np.float32)
    return b.mean(axis=(1, 3))


def read_info(kaggle_dir: Path) -> dict[str, dict]:
    """Rows of ``HuBMAP-20-dataset_information.csv`` (the file, or the download folder holding it) by slide id
    (``image_file`` without ``.tiff``)."""
    path = Path(kaggle_dir)
    path = path / INFO_CSV if path.is_dir() else path
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    need = ("image_file", "width_pixels", "height_pixels", "patient_number")
    if not rows or any(c not in rows[0] for c in need):
        raise UserError(f"{path}: expected columns {', '.join(need)}")
    out = {}
    for n, r in enumerate(rows, start=2):
        try:
            out[Path(r["image_file"]).stem] = {"width": int(r["width_pixels"]), "height": int(r["height_pixels"]),
                                               "patient": str(r["patient_number"]).strip(), **r}
        except ValueError:
            raise UserError(f"{path}:{n}: width_pixels/height_pixels are not integers") from None
    return out


__all__ = ["INFO_CSV", "Slide", "area_downscale", "tissue_mask", "read_info"]
