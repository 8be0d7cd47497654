"""Folders of per-slice TIFFs (the Kaggle layout): listing, validation and reading."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile

from nnunet_vasculature.errors import UserError

_SLICE_RE = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)


def list_slices(folder: Path) -> list[Path]:
    """Slice files of ``folder`` sorted by slice number; the numbers must form one unbroken run.

    Kaggle names slices ``0000.tif`` … ; directory order is not trusted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found")
    numbered = []
    for p in folder.iterdir():
        m = _SLICE_RE.match(p.name)
        if m:
            numbered.append((int(m.group(1)), p))
    if not numbered:
        raise UserError(f"{folder}: no slice files (expected 0000.tif, 0001.tif, ...)")
    numbered.sort()
    nums = [n for n, _ in numbered]
    if len(set(nums)) != len(nums):
        dup = next(n for a, n in zip(nums, nums[1:]) if a == n)
        raise UserError(f"{folder}: slice number {dup} appears twice")
    expected = range(nums[0], nums[0] + len(nums))
    if nums != list(expected):
        missing = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))
        raise UserError(f"{folder}: missing slice {missing[0]:04d} (slices {nums[0]}..{nums[-1]}, "
                        f"{len(missing)} missing)")
    return [p for _, p in numbered]


def read_slice(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read one 2D slice; a truncated/non-TIFF file or a slice of another size is a UserError."""
    try:
        arr = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for corrupt files
        raise UserError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise UserError(f"{path}: expected a 2D slice, got shape {arr.shape}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise UserError(f"{path}: slice is {arr.shape[0]}x{arr.shape[1]}, "
                        f"other slices are {shape[0]}x{shape[1]}")
    return arr


def slice_shape(path: Path) -> tuple[int, int]:
    """Shape of a slice from its TIFF header, without reading the pixels."""
    try:
        with tifffile.TiffFile(path) as tf:
            shape = tf.pages[0].shape
    except Exception as e:
        raise UserError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None
    if len(shape) != 2:
        raise UserError(f"{path}: expected a 2D slice, got shape {tuple(shape)}")
    return tuple(shape)


IGNORE_VALUE = 128   # "unsure" in pseudo-label folders; nnU-Net's ignore label after conversion


def read_label_slice(path: Path, shape: tuple[int, int], allow_ignore: bool = False) -> np.ndarray:
    """Read a label slice as {0, 1} (and 2 for the ignore value 128 when ``allow_ignore``).

    Values other than 0, 1, 255 (and 128) are refused.
    """
    lab = read_slice(path, shape)
    bad = (lab != 0) & (lab != 1) & (lab != 255)
    if allow_ignore:
        bad &= lab != IGNORE_VALUE
    if bad.any():
        vals = np.unique(lab[bad])[:5].tolist()
        raise UserError(f"{path}: label values {vals} found, expected only 0, 1 or 255"
                        + (f" (or {IGNORE_VALUE})" if allow_ignore else ""))
    out = (lab > 0).astype(np.uint8)
    if allow_ignore:
        out[lab == IGNORE_VALUE] = 2
    return out
