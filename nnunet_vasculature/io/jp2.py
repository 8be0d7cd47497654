"""Folders of JPEG 2000 slices (the Human Organ Atlas portal's downloads, one file per z-plane) as
prediction inputs, decoded with imagecodecs.

Slices are ordered by the last number in their names (``..._0001.jp2``); the numbers must form one unbroken
run (a missing or doubled number is refused, as for the Kaggle TIFF slices), and every slice must have the
first one's size and data type. The voxel size is the one given, else the one in the folder's name
(``..._25.08um_...``, µm), else a UserError. One level (the portal's binnings are separate downloads).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.pyramid import BlockReader, Level, Pyramid, check_dtype
from nnunet_vasculature.io.volume_source import FOLDER_NAME, GIVEN

SUFFIXES = (".jp2", ".j2k", ".jpx", ".jph")
CHUNK_PLANES = 16            # slices decoded together (in threads) and kept for the next reads
_NUMBER = re.compile(r"(\d+)(?!.*\d)")
_SPACING = re.compile(r"(\d+(?:\.\d+)?)\s*um", re.IGNORECASE)


def list_jp2(folder: Path) -> list[Path]:
    """The slice files of ``folder`` in z order.

    Args:
        folder: a folder of ``*.jp2`` files.

    Returns:
        the files, sorted by the last number in their names (one unbroken run of numbers).
    """
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()]
    if not files:
        raise UserError(f"{folder}: no JPEG 2000 slices (*.jp2)")
    numbered = []
    for p in files:
        m = _NUMBER.search(p.stem)
        if m is None:
            raise UserError(f"{p}: no slice number in the name")
        numbered.append((int(m.group(1)), p))
    numbered.sort()
    for (a, pa), (b, pb) in zip(numbered, numbered[1:]):
        if a == b:
            raise UserError(f"{folder}: slice number {a} appears twice ({pa.name}, {pb.name})")
    first, last = numbered[0][0], numbered[-1][0]
    if last - first + 1 != len(numbered):
        present = {n for n, _ in numbered}
        missing = [n for n in range(first, last + 1) if n not in present]
        raise UserError(f"{folder}: missing slice {missing[0]} (slices {first}..{last}, {len(missing)} missing)")
    return [p for _, p in numbered]


def is_jp2_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding JPEG 2000 files.

    Args:
        path: a folder.

    Returns:
        True when it holds a ``*.jp2`` (or ``.j2k``) file.
    """
    path = Path(path)
    return path.is_dir() and any(p.suffix.lower() in SUFFIXES for p in path.iterdir())


def spacing_from_name(folder: Path) -> float | None:
    """The voxel size written in the folder's name (``25.08um``), None if absent or ambiguous.

    Args:
        folder: the slice folder.

    Returns:
        µm, or None.
    """
    found = {float(m) for m in _SPACING.findall(Path(folder).name)}
    return found.pop() if len(found) == 1 else None


def decode_slice(path: Path, shape: tuple[int, int] | None = None, dtype: np.dtype | None = None) -> np.ndarray:
    """One slice; a corrupt file or one of another size or data type is a UserError naming it.

    Args:
        path: the file.
        shape: the (y, x) size the other slices have.
        dtype: the data type the other slices have.

    Returns:
        the 2D plane.
    """
    import imagecodecs
    try:
        plane = imagecodecs.jpeg2k_decode(Path(path).read_bytes())
    except Exception as e:      # imagecodecs raises its own error types
        raise UserError(f"{path}: not a readable JPEG 2000 file ({type(e).__name__}: {e})") from None
    if plane.ndim != 2:
        raise UserError(f"{path}: expected a grey-level slice, got shape {plane.shape}")
    if shape is not None and tuple(plane.shape) != tuple(shape):
        raise UserError(f"{path}: slice is {plane.shape[0]}x{plane.shape[1]}, the first one {shape[0]}x{shape[1]}")
    if dtype is not None and plane.dtype != dtype:
        raise UserError(f"{path}: slice is {plane.dtype}, the first one {np.dtype(dtype)}")
    return plane


def read_jp2_folder(folder: Path, spacing_um: float | None = None, name: str | None = None,
                    threads: int = 4) -> Pyramid:
    """A folder of JPEG 2000 slices as a one-level pyramid.

    Args:
        folder: the slice folder.
        spacing_um: the voxel size (default: from the folder's name).
        name: the volume's name (default: the folder name).
        threads: decoding threads.

    Returns:
        the pyramid.
    """
    folder = Path(folder)
    files = list_jp2(folder)
    spacing = spacing_um if spacing_um is not None else spacing_from_name(folder)
    if spacing is None:
        raise UserError(f"{folder}: the voxel size is not in the folder's name; pass --spacing UM")
    if not spacing > 0:
        raise UserError(f"{folder}: spacing {spacing}: must be positive")
    first = decode_slice(files[0])
    dtype = check_dtype(first.dtype, str(files[0]))
    plane_shape = first.shape

    def open_reader() -> BlockReader:
        def read(z0: int, z1: int) -> np.ndarray:
            with ThreadPoolExecutor(max(1, threads)) as pool:
                planes = list(pool.map(lambda p: decode_slice(p, plane_shape, dtype), files[z0:z1]))
            return np.stack(planes)
        return read

    level = Level("0", (len(files), *plane_shape), (float(spacing),) * 3, (0.0, 0.0, 0.0), CHUNK_PLANES, dtype,
                  open_reader)
    return Pyramid(name or folder.name, str(folder), "JPEG 2000 slices", [level],
                   {"source": str(folder), "slices": len(files)}, files,
                   GIVEN if spacing_um is not None else FOLDER_NAME)


__all__ = ["SUFFIXES", "list_jp2", "is_jp2_folder", "spacing_from_name", "decode_slice", "read_jp2_folder"]
