"""N5 multiscale folders in the Human Organ Atlas layout as prediction inputs (read with tensorstore).

Root ``attributes.json``: ``axes`` (storage order, e.g. ``["x", "y", "z"]``), ``downsamplingFactors``
(one triple per level, in the axes' order), ``resolution`` and ``units`` (per axis); levels ``s0``, ``s1``,
... each an N5 dataset whose ``dimensions`` are listed in that same axis order (``[x, y, z]``: N5 lists
the fastest axis first). Spacing of level ``l`` along an axis: ``resolution * factor``; as in
BigDataViewer's mipmaps, the centre of voxel 0 of a level downsampled by ``f`` lies at ``(f - 1) / 2``
level-0 voxels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def is_n5(path: Path) -> bool:
    """Whether ``path`` is an N5 container root (an ``attributes.json`` and no zarr metadata).

    Args:
        path: a folder.

    Returns:
        True for an N5 folder.
    """
    path = Path(path)
    return (path / "attributes.json").is_file() and not (path / "zarr.json").is_file()


def _attributes(path: Path, where: str) -> dict:
    file = path / "attributes.json"
    if not file.is_file():
        raise UserError(f"{where}: no attributes.json")
    try:
        attrs = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(attrs, dict):
        raise UserError(f"{file}: expected a JSON object")
    return attrs


def _triple(value: Any, what: str, where: str) -> list:
    if not isinstance(value, list) or len(value) != 3:
        raise UserError(f"{where}: {what} {value!r}; expected three values, one per axis")
    return value


def read_n5(path: Path, name: str | None = None) -> Pyramid:
    """The levels of an N5 multiscale folder.

    Args:
        path: the folder holding ``attributes.json`` and ``s0``, ``s1``, ...
        name: the volume's name (default: the folder name).

    Returns:
        the pyramid.
    """
    path = Path(path)
    where = str(path)
    root = _attributes(path, where)
    if "dimensions" in root:
        raise UserError(f"{where}: an N5 dataset, not a multiscale folder; give the folder holding s0, s1, ...")
    for key in ("downsamplingFactors", "resolution", "units"):
        if key not in root:
            raise UserError(f"{where}/attributes.json: no '{key}'; not a multiscale N5 folder in the HOA layout")
    factors = root["downsamplingFactors"]
    if not isinstance(factors, list) or not factors:
        raise UserError(f"{where}/attributes.json: downsamplingFactors {factors!r}; expected a list of triples")
    resolution = [float(r) for r in _triple(root["resolution"], "resolution", where)]
    units = [unit_to_um(u, where) for u in _triple(root["units"], "units", where)]
    root_axes = root.get("axes")
    levels = []
    for index, factor in enumerate(factors):
        factor = [float(f) for f in _triple(factor, f"downsamplingFactors[{index}]", where)]
        key = f"s{index}"
        level_dir, level_where = path / key, f"{where}/{key}"
        if not level_dir.is_dir():
            raise UserError(f"{where}: level {key} is listed in downsamplingFactors but missing")
        attrs = _attributes(level_dir, level_where)
        axes = attrs.get("axes", root_axes)
        if axes is None:
            raise UserError(f"{where}: no 'axes' in the root or level attributes; the axis order cannot be known")
        if root_axes is not None and list(axes) != list(root_axes):
            raise UserError(f"{level_where}: axes {axes} differ from the root's {root_axes}")
        dims = attrs.get("dimensions")
        if not isinstance(dims, list) or len(dims) != len(axes):
            raise UserError(f"{level_where}: dimensions {dims} do not match the axes {axes}")
        perm = axis_permutation(_triple(list(axes), "axes", level_where), level_where)
        dtype = check_dtype(attrs.get("dataType"), level_where)
        block = _triple(attrs.get("blockSize"), "blockSize", level_where)
        shape = tuple(int(dims[p]) for p in perm)
        spacing = tuple(resolution[p] * factor[p] * units[p] for p in perm)
        translation = tuple((factor[p] - 1) / 2 * resolution[p] * units[p] for p in perm)
        levels.append(Level(key, shape, spacing, translation, int(block[perm[0]]), dtype, _opener(level_dir, perm)))
    check_level_shapes(levels, where)
    provenance = {"source": where, "stored_axes": list(root_axes or axes)}
    files = [path / "attributes.json"] + [path / lv.key / "attributes.json" for lv in levels]
    return Pyramid(name or path.name.removesuffix(".n5"), where, "N5", levels, provenance, files)


def _opener(level_dir: Path, perm: list[int]) -> Any:
    def open_reader() -> BlockReader:
        import tensorstore as ts
        try:
            array = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(level_dir)}},
                            read=True).result()
        except ValueError as e:
            raise UserError(f"{level_dir}: tensorstore cannot open it ({str(e).splitlines()[0]})") from None
        z_axis = perm[0]

        def read(z0: int, z1: int) -> np.ndarray:
            index = [slice(None)] * 3
            index[z_axis] = slice(z0, z1)
            return np.ascontiguousarray(array[tuple(index)].read().result().transpose(perm))
        return read
    return open_reader


__all__ = ["is_n5", "read_n5"]
