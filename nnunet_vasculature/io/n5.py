"""N5 multiscale folders in the Human Organ Atlas layout as prediction inputs (read with tensorstore).

Root ``attributes.json``: ``axes`` (storage order, fastest first: the atlas writes ``["x", "y", "z"]``; any
order of x, y and z is read as declared, anything else is refused), ``downsamplingFactors``
(one triple per level, in the axes' order), ``resolution`` and ``units`` (per axis); levels ``s0``, ``s1``,
... each an N5 dataset whose ``dimensions`` are listed in that same axis order (``[x, y, z]``: N5 lists
the fastest axis first). Spacing of level ``l`` along an axis: ``resolution * factor``; as in
BigDataViewer's mipmaps, the centre of voxel 0 of a level downsampled by ``f`` lies at ``(f - 1) / 2``
level-0 voxels.

Checked when a level is opened (cheap checks, before any voxel is predicted): every number of the attributes
is finite; every stored block of the level read lies inside the grid of the declared ``dimensions`` and
``blockSize`` and its header's size is the one that grid gives it (a ``dimensions`` list written in another
order than the blocks is refused wherever the sizes tell it apart; a cube of whole blocks cannot be told
apart, nor can an ``axes`` list relabelled over consistent files); the first stored block decodes as the
declared ``dataType``. Absent blocks read as 0 and are counted.
"""
from __future__ import annotations

import json
import os
import struct
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
    chunk_grid,
    finite_numbers,
    unit_to_um,
)

HOA_AXES = '["x", "y", "z"]'         # how the Human Organ Atlas writes ``axes`` (for messages)


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


def _axes(value: Any, file: str) -> list[str]:
    """The ``axes`` of an attributes file as lower-case names (checked by :func:`axis_permutation`)."""
    axis_permutation(value, file, f", fastest first (the atlas writes {HOA_AXES})")
    return [a.lower() for a in value]


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
    attributes = f"{where}/attributes.json"
    if "dimensions" in root:
        raise UserError(f"{where}: an N5 dataset, not a multiscale folder; give the folder holding s0, s1, ...")
    for key in ("downsamplingFactors", "resolution", "units"):
        if key not in root:
            raise UserError(f"{where}/attributes.json: no '{key}'; not a multiscale N5 folder in the HOA layout")
    factors = root["downsamplingFactors"]
    if not isinstance(factors, list) or not factors:
        raise UserError(f"{where}/attributes.json: downsamplingFactors {factors!r}; expected a list of triples")
    resolution = finite_numbers(root["resolution"], "resolution", attributes, 3)
    units = [unit_to_um(u, where) for u in _triple(root["units"], "units", where)]
    root_axes = _axes(root["axes"], attributes) if root.get("axes") is not None else None
    levels = []
    for index, factor in enumerate(factors):
        factor = finite_numbers(factor, f"downsamplingFactors[{index}]", attributes, 3)
        key = f"s{index}"
        level_dir, level_where = path / key, f"{where}/{key}"
        if not level_dir.is_dir():
            raise UserError(f"{where}: level {key} is listed in downsamplingFactors but missing")
        attrs = _attributes(level_dir, level_where)
        axes = _axes(attrs["axes"], f"{level_where}/attributes.json") if attrs.get("axes") is not None \
            else root_axes
        if axes is None:
            raise UserError(f"{attributes}: no 'axes' here or in the levels' attributes; the axis order cannot "
                            f"be known (the atlas writes {HOA_AXES})")
        if root_axes is not None and axes != root_axes:
            raise UserError(f"{level_where}: axes {axes} differ from the root's {root_axes}")
        dims = attrs.get("dimensions")
        if not isinstance(dims, list) or len(dims) != len(axes):
            raise UserError(f"{level_where}: dimensions {dims} do not match the axes {axes}")
        perm = axis_permutation(axes, level_where)
        dtype = check_dtype(attrs.get("dataType"), level_where)
        dims = [int(d) for d in finite_numbers(dims, "dimensions", f"{level_where}/attributes.json", 3)]
        block = [int(b) for b in finite_numbers(attrs.get("blockSize"), "blockSize",
                                                f"{level_where}/attributes.json", 3)]
        if min(block) < 1:
            raise UserError(f"{level_where}/attributes.json: blockSize {block}; expected positive sizes")
        shape = tuple(int(dims[p]) for p in perm)
        spacing = tuple(resolution[p] * factor[p] * units[p] for p in perm)
        translation = tuple((factor[p] - 1) / 2 * resolution[p] * units[p] for p in perm)
        levels.append(Level(key, shape, spacing, translation, int(block[perm[0]]), dtype, _opener(level_dir, perm),
                            _block_files(level_dir, dims, block, axes), 0.0))
    check_level_shapes(levels, where)
    provenance = {"source": where, "stored_axes": list(root_axes or axes)}
    files = [path / "attributes.json"] + [path / lv.key / "attributes.json" for lv in levels]
    return Pyramid(name or path.name.removesuffix(".n5"), where, "N5", levels, provenance, files)


def _open_array(level_dir: Path) -> Any:
    """The level as a tensorstore array (an absolute path: tensorstore refuses ``..``)."""
    import tensorstore as ts
    try:
        return ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(Path(level_dir).resolve())}},
                       read=True).result()
    except ValueError as e:
        raise UserError(f"{level_dir}: tensorstore cannot open it ({str(e).splitlines()[0]})") from None


def _block_header(file: Path) -> tuple[int, ...] | None:
    """The sizes an N5 block's header gives (N5 order), None when it is not a readable file."""
    if not os.path.isfile(file):
        return None
    try:
        with open(file, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                return ()
            ndim = struct.unpack(">H", head[2:4])[0]
            body = f.read(4 * ndim)
    except OSError:
        return None         # count_chunks names it
    return struct.unpack(f">{ndim}I", body) if len(body) == 4 * ndim else ()


def _stored_blocks(level_dir: Path) -> list[tuple[int, ...]]:
    """The grid indices of the entries stored under a level (``i/j/k``, N5 order), from its folder listing."""
    found = []
    for a in os.scandir(level_dir):
        if a.name.isdigit() and a.is_dir():
            for b in os.scandir(a.path):
                if b.name.isdigit() and b.is_dir():
                    found.extend((int(a.name), int(b.name), int(c.name)) for c in os.scandir(b.path)
                                 if c.name.isdigit())
    return found


def _block_files(level_dir: Path, dims: list[int], block: list[int], axes: list) -> Any:
    """Every block file of the level's grid, after checking the stored blocks against the declared sizes."""
    where = f"{level_dir}/attributes.json"
    described = f"dimensions {dims}, blockSize {block}, axes {list(axes)} in {where}"

    def files() -> list[Path]:
        counts = [-(-d // b) for d, b in zip(dims, block)]
        stored = sorted(_stored_blocks(level_dir))
        for index in stored:
            if any(i >= n for i, n in zip(index, counts)):
                raise UserError(f"{level_dir.joinpath(*map(str, index))}: a block outside the grid of {described}: "
                                f"the attributes do not describe these blocks")
        for index in stored:
            file = level_dir.joinpath(*map(str, index))
            header = _block_header(file)
            if header is None:
                continue        # not a readable file: count_chunks names it
            if header == ():
                raise UserError(f"{file}: not a readable N5 block (its header is cut or corrupt)")
            edge = tuple(min(b, d - i * b) for i, b, d in zip(index, block, dims))
            if header not in (edge, tuple(block)):          # writers store edge blocks cut or whole
                raise UserError(f"{file}: block of size {list(header)}, but {described} give it {list(edge)}: the "
                                f"block is corrupt or the attributes do not describe these blocks")
        readable = [index for index in stored if os.path.isfile(level_dir.joinpath(*map(str, index)))]
        if readable:
            index = readable[0]
            region = tuple(slice(i * b, min(d, (i + 1) * b)) for i, b, d in zip(index, block, dims))
            try:
                _open_array(level_dir)[region].read().result()
            except ValueError as e:
                raise UserError(f"{level_dir.joinpath(*map(str, index))}: the block cannot be decoded as declared "
                                f"in {where} ({str(e).splitlines()[0]})") from None
        return [level_dir.joinpath(*map(str, index)) for index in chunk_grid(dims, block)]
    return files


def _opener(level_dir: Path, perm: list[int]) -> Any:
    def open_reader() -> BlockReader:
        array = _open_array(level_dir)
        z_axis = perm[0]

        def read(z0: int, z1: int) -> np.ndarray:
            index = [slice(None)] * 3
            index[z_axis] = slice(z0, z1)
            try:
                data = array[tuple(index)].read().result()
            except ValueError as e:     # tensorstore names the block file that cannot be read or decoded
                raise UserError(f"{level_dir}: planes {z0}..{z1 - 1} cannot be read "
                                f"({str(e).splitlines()[0]})") from None
            return np.ascontiguousarray(data.transpose(perm))
        return read
    return open_reader


__all__ = ["is_n5", "read_n5"]
