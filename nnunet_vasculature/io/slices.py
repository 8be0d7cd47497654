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


def read_slice(path: Path, shape: tuple[int, int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Read one 2D slice; a truncated/non-TIFF file or a slice of another size is a UserError.

    Args:
        path: the TIFF file.
        shape: the (y, x) size every slice of its folder has (None: not checked).
        out: a (y, x) array of the slice's dtype to decode into (no new array); its shape is the check.

    Returns:
        The slice (``out`` where given).
    """
    if out is not None:
        try:
            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                if tuple(page.shape) != out.shape or np.dtype(page.dtype) != out.dtype:
                    raise UserError(f"{path}: slice is {'x'.join(map(str, page.shape))} {page.dtype}, other "
                                    f"slices are {out.shape[0]}x{out.shape[1]} {out.dtype}")
                return page.asarray(out=out)
        except UserError:
            raise
        except Exception as e:  # tifffile raises many types for corrupt files
            raise UserError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None
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
    return label_classes(read_slice(path, shape), path, allow_ignore)


def label_classes(lab: np.ndarray, path: Path, allow_ignore: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """A label slice's values as classes: 0 -> 0, 1 and 255 -> 1 (and the ignore value 128 -> 2 when
    ``allow_ignore``); any other value is a UserError naming ``path``.

    Args:
        lab: the slice as read (any integer dtype).
        path: the file it came from (for the error).
        allow_ignore: 128 is the ignore class 2 (a pseudo-label folder), not an error.
        out: a uint8 array of ``lab``'s shape for the classes (may be ``lab`` itself when it is uint8).

    Returns:
        The uint8 classes (``out`` where given).
    """
    if lab.dtype == np.uint8 and np.add(lab, 1, dtype=np.uint8).max() <= 2:   # only 0, 1, 255 (255 wraps to 0)
        return np.minimum(lab, 1, out=out)                                     # the Kaggle labels' fast path
    bad = (lab != 0) & (lab != 1) & (lab != 255)
    if allow_ignore:
        bad &= lab != IGNORE_VALUE
    if bad.any():
        vals = np.unique(lab[bad])[:5].tolist()
        raise UserError(f"{path}: label values {vals} found, expected only 0, 1 or 255"
                        + (f" (or {IGNORE_VALUE})" if allow_ignore else ""))
    ignore = lab == IGNORE_VALUE if allow_ignore else None             # before ``out`` (maybe ``lab``) is written
    classes = np.greater(lab, 0, out=np.empty(lab.shape, np.uint8) if out is None else out, casting="unsafe")
    if ignore is not None:
        classes[ignore] = 2
    return classes
