"""Multiscale inputs (OME-Zarr, N5, Human Organ Atlas datasets, JP2 slice folders) as one model: a
:class:`Pyramid` of :class:`Level` s, each a (z, y, x) grid in micrometres with a z-range reader, and the
choice of the level to predict (:func:`choose_level`). A chosen level is read as a
:class:`~nnunet_vasculature.io.volume_source.VolumeSource` (with its ``level``, ``translation``,
``chunk_depth`` and ``provenance``) through an :class:`AlignedReader`: every read of the underlying store
covers whole chunk rows (``chunk_depth`` planes), the last few rows are kept, so the predictor's small
overlapping z-reads decompress each chunk once.

The readers of each format (:mod:`.omezarr`, :mod:`.n5`, :mod:`.jp2`, :mod:`.hoa`) build a :class:`Pyramid`;
this module imports none of them, and none of them knows which input kinds exist
(:mod:`nnunet_vasculature.io.input_spec` does).

Geometry: ``spacing`` and ``translation`` are (z, y, x) in µm; the centre of voxel ``(k, j, i)`` lies at
``translation + (k, j, i) * spacing`` (NGFF's scale-then-translation). Every number taken from metadata goes
through :func:`finite_numbers` (a string or NaN is one line naming the file).

Chunks: a level of a chunked store may say how to find its chunk files (``Level.chunk_files``); the level read
is checked by :func:`count_chunks` when opened: an absent chunk is the fill value (zarr's rule: stores omit
empty chunks) and counted, one that exists but cannot be read (a dangling or looping link, a folder, no read
permission) is a UserError naming it.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.volume_source import METADATA, VolumeSource

BlockReader = Callable[[int, int], np.ndarray]      # (z0, z1) -> (z1 - z0, y, x) in the store's dtype

# unit names of NGFF (UDUNITS-2) and N5/BigDataViewer -> factor to micrometres
UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micrometer": 1.0, "micrometre": 1.0, "micron": 1.0,
              "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
              "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "angstrom": 1e-4}
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def unit_to_um(unit: object, where: str) -> float:
    """Factor from ``unit`` (e.g. ``"micrometer"``, ``"um"``, ``"nm"``) to µm; other units are a UserError.

    Args:
        unit: the unit string of the metadata.
        where: the store (for the message).

    Returns:
        the factor.
    """
    if not isinstance(unit, str) or unit.strip().lower() not in UNIT_TO_UM:
        raise UserError(f"{where}: unit {unit!r} is not a length unit this reader knows "
                        f"({', '.join(sorted(set(UNIT_TO_UM) - {'µm', 'μm'}))})")
    return UNIT_TO_UM[unit.strip().lower()]


def check_dtype(dtype: object, where: str) -> np.dtype:
    """The numpy dtype of a store's data type; one the predictor cannot read as float32 is a UserError.

    Args:
        dtype: anything ``np.dtype`` accepts.
        where: the store (for the message).

    Returns:
        the dtype.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise UserError(f"{where}: data type {dtype!r} is not supported") from None
    if dt.name not in SUPPORTED_DTYPES:
        raise UserError(f"{where}: data type {dt.name} is not supported (one of {', '.join(SUPPORTED_DTYPES)})")
    return dt


def finite_numbers(values: object, what: str, where: str, count: int | None = None) -> list[float]:
    """Numbers of a metadata vector; anything else (a string, NaN, infinity, a wrong length) is a UserError.

    Args:
        values: the JSON value (a list).
        what: its name in the metadata (for the message).
        where: the metadata file (for the message).
        count: the number of values expected (None: any).

    Returns:
        the values as floats.
    """
    if not isinstance(values, (list, tuple)) or (count is not None and len(values) != count):
        expected = f"{count} numbers" if count is not None else "a list of numbers"
        raise UserError(f"{where}: {what} {values!r}; expected {expected}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {what} {list(values)!r} holds {v!r}; expected finite numbers")
        out.append(float(v))
    return out


def axis_permutation(axes: object, where: str, hint: str = "") -> list[int]:
    """Positions of z, y, x in a store's axis order (names from its metadata, never assumed).

    Args:
        axes: the store's space axis names in storage order, e.g. ``["x", "y", "z"]`` (a list of x, y and z
            once each, any case; anything else, a string ``"xyz"`` included, is refused).
        where: the store or metadata file (for the message).
        hint: appended to the message (e.g. what the format's writer writes).

    Returns:
        ``perm`` with ``stored.transpose(perm)`` in (z, y, x).
    """
    names = [a.lower() for a in axes] if isinstance(axes, (list, tuple)) and all(isinstance(a, str) for a in axes) \
        else []
    if sorted(names) != ["x", "y", "z"]:
        raise UserError(f"{where}: axes {json.dumps(axes)}; expected x, y and z once each, in the order the data are "
                        f"stored{hint}")
    return [names.index(a) for a in "zyx"]


@dataclass(frozen=True)
class Level:
    """One resolution level: (z, y, x) ``shape``, ``spacing`` and ``translation`` in µm, the store's
    chunk depth along z, dtype, and ``open_reader()`` -> a z-range reader (opened when used)."""
    key: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    translation: tuple[float, float, float]
    chunk_depth: int
    dtype: np.dtype
    open_reader: Callable[[], BlockReader] = field(repr=False, compare=False)
    chunk_files: Callable[[], list[Path]] | None = field(default=None, repr=False, compare=False)
    fill_value: float = 0.0        # what an absent chunk reads as


def count_chunks(files: Sequence[Path], where: str) -> int:
    """How many of a level's chunk files are absent; one that exists but cannot be read is a UserError.

    Args:
        files: the path of every chunk of the level's grid.
        where: the level (for the message).

    Returns:
        the number of absent chunks.
    """
    absent = 0
    for f in files:
        try:
            info = os.lstat(f)
        except FileNotFoundError:
            absent += 1
            continue
        except OSError as e:
            raise UserError(f"{f}: chunk of {where} cannot be read ({e.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            try:
                info = os.stat(f)
            except OSError as e:
                raise UserError(f"{f}: chunk of {where} is a link that cannot be followed ({e.strerror})") from None
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{f}: chunk of {where} is not a file")
        if not os.access(f, os.R_OK):
            raise UserError(f"{f}: chunk of {where} cannot be read (permission denied)")
    return absent


def chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[int, ...]]:
    """Every chunk index of an array, in storage order.

    Args:
        shape: the array's shape (storage order).
        chunks: its chunk shape.

    Returns:
        the index tuples.
    """
    return list(itertools.product(*(range(-(-int(n) // int(c))) for n, c in zip(shape, chunks))))


@dataclass(frozen=True)
class Pyramid:
    """The levels of one volume, finest first; ``provenance``: what the data is (recorded in outputs)."""
    name: str
    where: str
    kind: str
    levels: list[Level]
    provenance: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)     # metadata files (the input's fingerprint), if local
    spacing_source: str = METADATA                       # where the levels' spacing came from


def check_level_shapes(levels: Sequence[Level], where: str) -> None:
    """Each level's shape must fit its spacing: shape · spacing equal to level 0's extent within two voxels.

    Args:
        levels: the levels, finest first.
        where: the store (for the message).
    """
    if not levels:
        raise UserError(f"{where}: no resolution levels in the metadata")
    base = levels[0]
    for lv in levels:
        if len(lv.shape) != 3 or min(lv.shape) < 1:
            raise UserError(f"{where}: level {lv.key} has shape {lv.shape}; expected three non-empty axes")
        if min(lv.spacing) <= 0 or not all(math.isfinite(s) for s in lv.spacing):
            raise UserError(f"{where}: level {lv.key} has spacing {lv.spacing}; expected positive numbers")
        if not all(math.isfinite(t) for t in lv.translation):
            raise UserError(f"{where}: level {lv.key} has translation {lv.translation}; expected finite numbers")
        for axis, name in enumerate("zyx"):
            extent, base_extent = lv.shape[axis] * lv.spacing[axis], base.shape[axis] * base.spacing[axis]
            if abs(extent - base_extent) > 2 * lv.spacing[axis]:
                raise UserError(f"{where}: level {lv.key} is {lv.shape[axis]} voxels of {lv.spacing[axis]:g} µm "
                                f"along {name}, level {base.key} {base.shape[axis]} of {base.spacing[axis]:g} µm: "
                                f"the metadata contradict the array shapes")


def choose_level(pyramid: Pyramid, level: int | str = "auto",
                 target_spacing_um: float | Sequence[float] | None = None) -> tuple[int, str]:
    """The level to read and a line saying which one, its spacing and shape.

    Args:
        pyramid: the volume.
        level: ``"auto"`` (the level whose spacing is nearest ``target_spacing_um``, by the sum over axes of
            ``|log(level spacing / target)|``, the finer one on a tie; level 0 without a target) or a level
            number (``0`` = finest).
        target_spacing_um: the model's voxel size in µm (one number or (z, y, x)).

    Returns:
        (level index, message).
    """
    levels = pyramid.levels
    listing = ", ".join(f"{i}: {_fmt(lv.spacing)} µm" for i, lv in enumerate(levels))
    if isinstance(level, str) and level.strip().lower() == "auto":
        if target_spacing_um is None:
            index, why = 0, "the finest; no target spacing given"
        else:
            target = _triple(target_spacing_um)
            if min(target) <= 0:
                raise UserError(f"target spacing {target_spacing_um}: must be positive")
            dist = [sum(abs(math.log(s / t)) for s, t in zip(lv.spacing, target)) for lv in levels]
            index = min(range(len(levels)), key=lambda i: (round(dist[i], 9), i))
            why = f"nearest the model's {_fmt(target)} µm"
    else:
        try:
            index = int(level)
        except (TypeError, ValueError):
            raise UserError(f"--level {level!r}: give 'auto' or a level number") from None
        if not 0 <= index < len(levels):
            raise UserError(f"{pyramid.where}: level {index} does not exist (levels {listing})")
        why = "as asked"
    lv = levels[index]
    message = (f"{pyramid.name}: level {index} of {len(levels)} ({pyramid.kind}, {why}): spacing "
               f"{_fmt(lv.spacing)} µm, shape {tuple(lv.shape)} (z, y, x)")
    return index, message


def _triple(value: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = [float(v) for v in value]
    if len(values) != 3:
        raise UserError(f"target spacing {value}: give one number or three (z, y, x)")
    return tuple(values)


def _fmt(spacing: Sequence[float]) -> str:
    values = [f"{s:g}" for s in spacing]
    return values[0] if len(set(values)) == 1 else " x ".join(values)


class AlignedReader:
    """Serves any z-range of a volume from whole chunk rows ``[c * chunk_depth, (c + 1) * chunk_depth)``
    read by ``read_block``; the ``keep`` rows read last stay in memory (thread-safe).

    Memory: ``keep * chunk_depth`` planes of the store's dtype."""

    def __init__(self, read_block: BlockReader, depth: int, chunk_depth: int, keep: int = 2):
        if chunk_depth < 1 or keep < 1:
            raise ValueError("chunk_depth and keep must be at least 1")
        self.read_block, self.depth, self.chunk_depth, self.keep = read_block, depth, chunk_depth, keep
        self.rows: OrderedDict[int, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def _row(self, row: int) -> np.ndarray:
        with self.lock:
            if row in self.rows:
                self.rows.move_to_end(row)
                return self.rows[row]
        z0 = row * self.chunk_depth
        block = np.asarray(self.read_block(z0, min(self.depth, z0 + self.chunk_depth)))
        with self.lock:
            self.rows[row] = block
            while len(self.rows) > self.keep:
                self.rows.popitem(last=False)
        return block

    def __call__(self, z0: int, z1: int) -> np.ndarray:
        """Planes [z0, z1) in the store's dtype.

        Args:
            z0: first plane.
            z1: one past the last plane.

        Returns:
            (z1 - z0, y, x) array.
        """
        z0, z1 = max(0, z0), min(self.depth, z1)
        if z0 >= z1:
            raise ValueError(f"empty z-range [{z0}, {z1})")
        first, last = z0 // self.chunk_depth, (z1 - 1) // self.chunk_depth
        parts = []
        for row in range(first, last + 1):
            start = row * self.chunk_depth
            parts.append(self._row(row)[max(z0, start) - start:min(z1, start + self.chunk_depth) - start])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def to_volume(pyramid: Pyramid, index: int, choice: str = "", keep_rows: int = 2) -> VolumeSource:
    """Level ``index`` of ``pyramid`` as a volume read through an :class:`AlignedReader`.

    Args:
        pyramid: the volume.
        index: the level.
        choice: the line of :func:`choose_level` (kept on the volume).
        keep_rows: chunk rows kept in memory.

    Returns:
        the volume; ``read(z0, z1)`` gives float32 (z, y, x) planes. No slice ids: the opener of the input
        gives them (:func:`nnunet_vasculature.io.input_spec.open_input`).
    """
    lv = pyramid.levels[index]
    chunk_count = absent = 0
    if lv.chunk_files is not None:
        files = lv.chunk_files()
        chunk_count, absent = len(files), count_chunks(files, f"{pyramid.where} level {lv.key}")
    reader = AlignedReader(lv.open_reader(), lv.shape[0], lv.chunk_depth, keep_rows)
    provenance = {**pyramid.provenance, "level": index, "level_key": lv.key, "format": pyramid.kind}
    if absent:
        provenance.update(absent_chunks=absent, fill_value=lv.fill_value)
    return VolumeSource(pyramid.name, tuple(lv.shape), tuple(lv.spacing), [], [(0, lv.shape[0], reader)],
                        files=list(pyramid.files), level=index, translation=tuple(lv.translation),
                        chunk_depth=lv.chunk_depth, provenance=provenance, choice=choice,
                        spacing_source=pyramid.spacing_source, chunk_count=chunk_count, absent_chunks=absent)


def chunks_line(volume: VolumeSource) -> str:
    """The line saying how many chunks of a chunked store's level are absent ("" when not counted).

    Args:
        volume: a level opened by :func:`to_volume`.

    Returns:
        the line.
    """
    if not volume.chunk_count:
        return ""
    if not volume.absent_chunks:
        return f"{volume.name}: all {volume.chunk_count} chunks of level {volume.level} are stored"
    return (f"{volume.name}: {volume.absent_chunks} of {volume.chunk_count} chunks of level {volume.level} are "
            f"absent, read as the fill value {volume.provenance.get('fill_value', 0):g} (zarr's rule for empty "
            f"chunks)")


__all__ = ["UNIT_TO_UM", "SUPPORTED_DTYPES", "unit_to_um", "check_dtype", "finite_numbers", "axis_permutation",
           "Level", "count_chunks", "chunk_grid", "Pyramid", "check_level_shapes", "choose_level", "AlignedReader",
           "to_volume", "chunks_line"]
