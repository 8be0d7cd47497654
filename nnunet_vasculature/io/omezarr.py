"""OME-Zarr images as prediction inputs: NGFF 0.4 (zarr format 2) and 0.5 (zarr format 3).

Everything comes from the metadata: the axes (names, types, units) give the storage order and the unit of
each space axis (converted to µm); each level's ``coordinateTransformations`` (and the multiscale's own)
are applied in the order listed. The Human Organ Atlas writes ``translation`` before ``scale`` (NGFF 0.4
asks for scale first, and strict readers refuse it): read in the listed order, translation ``[0.5]*3``
then scale ``s`` puts voxel ``i`` at ``(i + 0.5) * s`` (origin at the volume's corner), which is what
this reader returns; its arrays stored (x, y, z) are read as (z, y, x) through their axes. Axes other than
space (time, channel) must have length 1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.pyramid import (
    BlockReader,
    Level,
    Pyramid,
    axis_permutation,
    check_dtype,
    check_level_shapes,
    unit_to_um,
)


def is_omezarr(path: Path) -> bool:
    """Whether ``path`` looks like a zarr group (format 2 or 3).

    Args:
        path: a folder.

    Returns:
        True for a folder with ``zarr.json``, ``.zgroup`` or ``.zattrs``.
    """
    return any((Path(path) / f).is_file() for f in ("zarr.json", ".zgroup", ".zattrs"))


def multiscales_metadata(attrs: dict, where: str) -> tuple[dict, str]:
    """The first multiscale of a group's attributes and its NGFF version.

    Args:
        attrs: the group's attributes.
        where: the store (for the message).

    Returns:
        (multiscale dict, version string).
    """
    if isinstance(attrs.get("ome"), dict):
        ome = attrs["ome"]
        multiscales, version = ome.get("multiscales"), str(ome.get("version", "0.5"))
    else:
        multiscales = attrs.get("multiscales")
        version = str(multiscales[0].get("version", "0.4")) if isinstance(multiscales, list) and multiscales \
            and isinstance(multiscales[0], dict) else "?"
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise UserError(f"{where}: no NGFF 'multiscales' metadata (not an OME-Zarr image)")
    return multiscales[0], version


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
        vector = np.asarray(t[kind], dtype=float)
        if vector.shape != (ndim,):
            raise UserError(f"{where}: {kind} {t[kind]} has {vector.size} values for {ndim} axes")
        if kind == "translation":
            offset = offset + vector
        else:
            scale, offset = scale * vector, offset * vector
    return scale, offset


def read_omezarr(path: Path, name: str | None = None) -> Pyramid:
    """The levels of an OME-Zarr image.

    Args:
        path: the image group (``*.ome.zarr``).
        name: the volume's name (default: the multiscale's name, else the folder name).

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
    factors = []
    for i in space:
        if "unit" not in axes[i]:
            raise UserError(f"{where}: axis {names[i]} has no unit; the voxel size cannot be known")
        factors.append(unit_to_um(axes[i]["unit"], where))
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise UserError(f"{where}: the multiscale lists no datasets")
    outer = multiscale.get("coordinateTransformations") or []
    levels = []
    for ds in datasets:
        key = str(ds.get("path", "")) if isinstance(ds, dict) else ""
        try:
            arr = group[key]
        except KeyError:
            raise UserError(f"{where}: level '{key}' is listed in the metadata but missing") from None
        if not hasattr(arr, "shape"):
            raise UserError(f"{where}: level '{key}' is not an array")
        if arr.ndim != len(axes):
            raise UserError(f"{where}: level '{key}' has {arr.ndim} dimensions, the axes {names} {len(axes)}")
        for i, (n, size) in enumerate(zip(names, arr.shape)):
            if i not in space and size != 1:
                raise UserError(f"{where}: axis {n} has length {size}; only one channel/time point is supported")
        dtype = check_dtype(arr.dtype, f"{where}/{key}")
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
                            _opener(arr, space, perm, len(axes))))
    check_level_shapes(levels, where)
    stem = path.name.removesuffix(".zarr").removesuffix(".ome")
    order = [t.get("type") for t in (datasets[0].get("coordinateTransformations") or []) if isinstance(t, dict)]
    provenance = {"source": where, "ngff_version": version, "zarr_format": int(group.metadata.zarr_format),
                  "stored_axes": [names[i] for i in space]}
    if order[:2] == ["translation", "scale"]:
        provenance["note"] = "translation listed before scale (read in the listed order)"
    files = [f for f in [path / m for m in ("zarr.json", ".zattrs", ".zgroup")]
             + [path / lv.key / m for lv in levels for m in ("zarr.json", ".zarray")] if f.is_file()]
    return Pyramid(name or str(multiscale.get("name") or stem), where, f"OME-Zarr {version}", levels, provenance,
                   files)


def _opener(arr: Any, space: list[int], perm: list[int], ndim: int) -> Any:
    z_axis = space[perm[0]]

    def open_reader() -> BlockReader:
        def read(z0: int, z1: int) -> np.ndarray:
            index = [slice(None) if i in space else 0 for i in range(ndim)]
            index[z_axis] = slice(z0, z1)
            block = np.asarray(arr[tuple(index)])          # space axes only, in storage order
            return np.ascontiguousarray(block.transpose(perm))
        return read
    return open_reader


__all__ = ["is_omezarr", "multiscales_metadata", "compose_transforms", "read_omezarr"]
