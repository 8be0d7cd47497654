"""OME-Zarr images as prediction inputs: NGFF 0.4 (zarr format 2) and 0.5 (zarr format 3).

Everything comes from the metadata: the axes (names, types, units) give the storage order and the unit of
each space axis (converted to µm); each level's ``coordinateTransformations`` (and the multiscale's own)
are applied in the order listed. The Human Organ Atlas writes ``translation`` before ``scale`` (NGFF 0.4
asks for scale first, and strict readers refuse it): read in the listed order, translation ``[0.5]*3``
then scale ``s`` puts voxel ``i`` at ``(i + 0.5) * s`` (origin at the volume's corner), which is what
this reader returns; its arrays stored (x, y, z) are read as (z, y, x) through their axes. Axes other than
space (time, channel) must have length 1.

NGFF requires a ``scale`` for every level: an image without one is refused, unless ``--spacing`` gives level
0's voxel size (the other levels' then follow from their shapes). Scale and translation values must be finite
numbers, a level's path must stay inside the image (no ``..``), and a level whose metadata cannot be read, or a
chunk that cannot be decoded, is one line naming it.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.ngff_metadata import level_key, multiscales_metadata
from nnunet_vasculature.io.pyramid import (
    BlockReader,
    Level,
    Pyramid,
    axis_permutation,
    check_dtype,
    check_level_shapes,
    chunk_grid,
    finite_numbers,
    unit_to_um,
)
from nnunet_vasculature.io.volume_source import GIVEN, METADATA


def is_omezarr(path: Path) -> bool:
    """Whether ``path`` looks like a zarr group (format 2 or 3).

    Args:
        path: a folder.

    Returns:
        True for a folder with ``zarr.json``, ``.zgroup`` or ``.zattrs``.
    """
    return any((Path(path) / f).is_file() for f in ("zarr.json", ".zgroup", ".zattrs"))


def compose_transforms(transforms: Sequence[dict], ndim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``index -> index * scale + offset`` of a list of NGFF scale/translation transforms, in listed order.

    Args:
        transforms: the ``coordinateTransformations`` list.
        ndim: the number of axes.
        where: the store and level (for the message).

    Returns:
        (scale, offset) per axis.
    """
    scale, offset = np.ones(ndim), np.zeros(ndim)
    for t in transforms or []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in t:
            raise UserError(f"{where}: coordinate transformation {t} is not a scale or translation vector "
                            f"this reader supports")
        vector = np.asarray(finite_numbers(t[kind], kind, where, ndim))
        if kind == "translation":
            offset = offset + vector
        else:
            scale, offset = scale * vector, offset * vector
    return scale, offset


def has_scale(transforms: object) -> bool:
    """Whether a ``coordinateTransformations`` list holds a scale (NGFF requires one per level).

    Args:
        transforms: the list (or None).

    Returns:
        True or False.
    """
    return isinstance(transforms, list) and any(isinstance(t, dict) and t.get("type") == "scale" for t in transforms)


def read_omezarr(path: Path, name: str | None = None, spacing_um: float | None = None) -> Pyramid:
    """The levels of an OME-Zarr image.

    Args:
        path: the image group (``*.ome.zarr``).
        name: the volume's name (default: the multiscale's name, else the folder name).
        spacing_um: level 0's voxel size (µm) for an image without scales (``--spacing``); ignored otherwise.

    Returns:
        the pyramid (levels finest first as listed in the metadata).
    """
    import zarr
    path, where = Path(path), str(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:      # zarr raises several types for a missing or broken group
        raise UserError(f"{where}: not a readable zarr group ({type(e).__name__}: {e})") from None
    multiscale, version = multiscales_metadata(dict(group.attrs), where)
    axes = multiscale.get("axes")
    if not isinstance(axes, list) or not axes:
        raise UserError(f"{where}: the multiscale lists no axes")
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in axes]    # NGFF 0.3 listed names only
    names = [str(a.get("name", "")) for a in axes]
    space = [i for i, a in enumerate(axes)
             if a.get("type", "space" if a.get("name") in ("z", "y", "x") else None) == "space"]
    if len(space) != 3:
        raise UserError(f"{where}: axes {names} have {len(space)} space axes; expected 3")
    perm = axis_permutation([names[i] for i in space], where)
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise UserError(f"{where}: the multiscale lists no datasets")
    scaled = [has_scale(ds.get("coordinateTransformations") if isinstance(ds, dict) else None) for ds in datasets]
    given = not any(scaled) and spacing_um is not None
    if not all(scaled) and not given:
        key = level_key(datasets[scaled.index(False)], where)
        raise UserError(f"{where}: level '{key}' has no scale in its coordinateTransformations (NGFF requires "
                        f"one); the voxel size cannot be known: pass --spacing UM (level 0's voxel size)"
                        if not any(scaled) else f"{where}: level '{key}' has no scale in its "
                        f"coordinateTransformations (NGFF requires one per level)")
    factors = []
    for i in space:
        if "unit" not in axes[i] and not given:
            raise UserError(f"{where}: axis {names[i]} has no unit; the voxel size cannot be known")
        factors.append(1.0 if given else unit_to_um(axes[i]["unit"], where))
    outer = [] if given else multiscale.get("coordinateTransformations") or []
    levels = []
    base_shape = None
    for ds in datasets:
        key = level_key(ds, where)
        try:
            arr = group[key]
        except KeyError:
            raise UserError(f"{where}: level '{key}' is listed in the metadata but missing") from None
        except Exception as e:      # zarr raises several types for unreadable metadata
            raise UserError(f"{where}/{key}: the level's metadata cannot be read ({type(e).__name__}: "
                            f"{_first_line(e)})") from None
        if not hasattr(arr, "shape"):
            raise UserError(f"{where}: level '{key}' is not an array")
        if arr.ndim != len(axes):
            raise UserError(f"{where}: level '{key}' has {arr.ndim} dimensions, the axes {names} {len(axes)}")
        for i, (n, size) in enumerate(zip(names, arr.shape)):
            if i not in space and size != 1:
                raise UserError(f"{where}: axis {n} has length {size}; only one channel/time point is supported")
        dtype = check_dtype(arr.dtype, f"{where}/{key}")
        if given:               # no scales: level 0 at --spacing, the others by their shapes
            base_shape = base_shape or arr.shape
            scale = np.array([spacing_um * max(1, round(b / n)) for b, n in zip(base_shape, arr.shape)])
            offset = (scale / spacing_um - 1) / 2 * spacing_um
        else:
            scale, offset = compose_transforms(ds.get("coordinateTransformations"), len(axes), f"{where}/{key}")
            outer_scale, outer_offset = compose_transforms(outer, len(axes), where)
            scale, offset = scale * outer_scale, offset * outer_scale + outer_offset
        stored = space
        shape = tuple(int(arr.shape[stored[p]]) for p in perm)
        spacing = tuple(float(scale[stored[p]] * factors[p]) for p in perm)
        translation = tuple(float(offset[stored[p]] * factors[p]) for p in perm)
        chunks = getattr(arr, "shards", None) or arr.chunks
        chunk_depth = int(chunks[stored[perm[0]]])
        levels.append(Level(key, shape, spacing, translation, chunk_depth, dtype,
                            _opener(arr, space, perm, len(axes), f"{where}/{key}", path / key),
                            _chunk_files(arr, path / key), float(arr.fill_value or 0)))
    check_level_shapes(levels, where)
    stem = path.name.removesuffix(".zarr").removesuffix(".ome")
    order = [t.get("type") for t in (datasets[0].get("coordinateTransformations") or []) if isinstance(t, dict)]
    provenance = {"source": where, "ngff_version": version, "zarr_format": int(group.metadata.zarr_format),
                  "stored_axes": [names[i] for i in space]}
    if order[:2] == ["translation", "scale"]:
        provenance["note"] = "translation listed before scale (read in the listed order)"
    files = [f for f in [path / m for m in ("zarr.json", ".zattrs", ".zgroup")]
             + [path / lv.key / m for lv in levels for m in ("zarr.json", ".zarray")] if f.is_file()]
    if given:
        provenance["note"] = f"no scale in the metadata: level 0 at --spacing {spacing_um:g} µm"
    return Pyramid(name or str(multiscale.get("name") or stem), where, f"OME-Zarr {version}", levels, provenance,
                   files, GIVEN if given else METADATA)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else "no detail"


def _grid_shape(arr: Any) -> tuple[int, ...]:
    """The shape of the stored objects: shards when sharded, else chunks."""
    return tuple(getattr(arr, "shards", None) or arr.chunks)


def _chunk_files(arr: Any, level_dir: Path) -> Any:
    def files() -> list[Path]:
        return [level_dir / arr.metadata.encode_chunk_key(index) for index in chunk_grid(arr.shape, _grid_shape(arr))]
    return files


def _opener(arr: Any, space: list[int], perm: list[int], ndim: int, where: str, level_dir: Path) -> Any:
    z_axis = space[perm[0]]

    def open_reader() -> BlockReader:
        def read(z0: int, z1: int) -> np.ndarray:
            index = [slice(None) if i in space else 0 for i in range(ndim)]
            index[z_axis] = slice(z0, z1)
            try:
                block = np.asarray(arr[tuple(index)])          # space axes only, in storage order
            except Exception as e:      # codecs and stores raise many types (RuntimeError of blosc, OSError)
                raise UserError(_read_fault(arr, index, where, level_dir, e)) from None
            return np.ascontiguousarray(block.transpose(perm))
        return read
    return open_reader


def _read_fault(arr: Any, index: list, where: str, level_dir: Path, error: Exception) -> str:
    """The line for a failed read: the first chunk of the region that cannot be read, named by its file."""
    grid = _grid_shape(arr)
    ranges = [range(s.start // g, -(-s.stop // g)) if isinstance(s, slice) and s.stop is not None else
              range(-(-n // g)) if isinstance(s, slice) else range(s // g, s // g + 1)
              for s, g, n in zip(index, grid, arr.shape)]
    for chunk in itertools.product(*ranges):
        region = tuple(slice(c * g, min(n, (c + 1) * g)) for c, g, n in zip(chunk, grid, arr.shape))
        try:
            arr[region]
        except Exception as e:      # as above
            return (f"{level_dir / arr.metadata.encode_chunk_key(chunk)}: chunk of {where} cannot be read "
                    f"({type(e).__name__}: {_first_line(e)})")
    return f"{where}: reading failed ({type(error).__name__}: {_first_line(error)})"


__all__ = ["is_omezarr", "compose_transforms", "has_scale", "read_omezarr"]
