"""Volumes read a few slices at a time: numpy/zarr arrays, zarr stores, folders of slice files,
3D files and nnU-Net ``.npz`` probabilities. Everything is indexed ``vol[z0:z1] -> (B, H, W)``."""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import tifffile

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.decoded import DecodedArray, settle_zarr_reads  # noqa: F401
from nnunet_vasculature.io.ngff import (
    image_attributes,
    is_probability_image,
    open_image,
    refuse_foreign_image,
)
from nnunet_vasculature.io.ngff_metadata import level_key, multiscales_metadata
from nnunet_vasculature.io.slices import list_slices, read_label_slice, read_slice, slice_shape
from nnunet_vasculature.io.store import (
    accept_foreign,
    check_chunks,
    has_probability_record,
    quantize,
    unreadable_store,
)

if TYPE_CHECKING:      # zarr is imported by the functions that open stores
    import zarr


class ZSliceable(Protocol):
    """A (z, y, x) volume read a block of planes at a time, ``vol[z0:z1] -> (B, H, W)``: numpy and zarr
    arrays and the volumes of this module."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, sl: slice, /) -> np.ndarray: ...


class SliceStack:
    """A folder's per-slice 2D files as a lazily read 3D volume."""

    def __init__(self, files: list[Path]):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise UserError("empty list of slice files")
        self.plane = slice_shape(self.files[0])
        self.shape = (len(self.files), *self.plane)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, sl: slice) -> np.ndarray:
        if not isinstance(sl, slice):
            raise TypeError("SliceStack supports z-slices only")
        return np.stack([read_slice(f, self.plane) for f in self.files[sl]])

    @property
    def slice_names(self) -> list[str]:
        return [f.stem for f in self.files]


def _is_zarr_node(path: Path) -> bool:
    """Whether ``path`` is a zarr store, group or array by its name or its metadata (a store need not end .zarr)."""
    return path.suffix == ".zarr" or any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def _is_zarr(path: Path) -> bool:
    return _is_zarr_node(path) or any(p.suffix == ".zarr" for p in path.parents)


def open_zarr_array(path: Path) -> zarr.Array:
    """Open a zarr array (reads wrapped by :class:`DecodedArray`); a group holding exactly one array is accepted
    for it."""
    import zarr
    try:
        node = zarr.open(str(path), mode="r")
        arrays = list(node.array_keys()) if isinstance(node, zarr.Group) else []
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a bad store
        raise unreadable_store(path, e) from None
    if isinstance(node, zarr.Group):
        if len(arrays) != 1:
            raise UserError(f"{path}: zarr group holds {len(arrays)} arrays ({', '.join(arrays)}); "
                            f"name one, e.g. {path}/{arrays[0] if arrays else 'kidney_5'}")
        node = node[arrays[0]]
    return DecodedArray(node, Path(path))


def zarr_kidneys(path: Path) -> list[str]:
    """Paths of every probability array in a zarr store (a group gives one per kidney)."""
    import zarr
    try:
        node = zarr.open(str(path), mode="r")
        return [f"{path}/{k}" for k in sorted(node.array_keys())] if isinstance(node, zarr.Group) else [str(path)]
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a bad store
        raise unreadable_store(path, e) from None


def expand_probabilities(paths: list, foreign_probabilities: bool = False) -> list[str]:
    """Probability paths with every zarr group (one array per kidney, from ``predict``) expanded; an NGFF
    probability image (``*.ome.zarr``) is one kidney, an NGFF image that ``predict`` did not write is refused
    (with ``foreign_probabilities``: one kidney too)."""
    out = []
    for p in paths:
        refuse_foreign_image(p, foreign_probabilities)
        if is_probability_image(p) or (foreign_probabilities and image_attributes(p) is not None):
            out.append(str(p))
        else:
            out.extend(zarr_kidneys(Path(p)) if _is_zarr_node(Path(p)) else [str(p)])
    return out


def open_probability_image(path: Path) -> tuple[ZSliceable, dict]:
    """Level 0 of an NGFF probability image written by ``predict`` (``*.ome.zarr``), checked
    (:func:`nnunet_vasculature.io.ngff.open_image`: complete, uint8, no chunk missing).

    Args:
        path: the image group.

    Returns:
        (uint8 volume, attributes: ``kidney``, ``spacing``, ``translation``, ``slice_ids`` when recorded,
        ``source``, ``provenance``).
    """
    arr, meta = open_image(path)
    return CheckedU8(DecodedArray(arr, Path(path) / "0"), str(path)), meta


def open_foreign_image(path: Path) -> tuple[ZSliceable, dict]:
    """Level 0 of an NGFF image that ``predict`` did not write, read as uint8 probabilities
    (``--foreign_probabilities``): the first dataset of its first multiscale, stored with axes (z, y, x).

    Args:
        path: the image group.

    Returns:
        (volume, attributes: ``kidney``, the multiscale's name or the folder's); metadata this reader does not
        take (no dataset, a path leaving the image, other axes) is a one-line UserError.
    """
    multiscale, _ = multiscales_metadata(image_attributes(path) or {}, str(path))
    datasets = multiscale.get("datasets")
    key = level_key(datasets[0] if isinstance(datasets, list) and datasets else None, str(path))
    axes = [a.get("name") if isinstance(a, dict) else a for a in multiscale.get("axes") or ["z", "y", "x"]]
    if [str(a).lower() for a in axes] != ["z", "y", "x"]:
        raise UserError(f"{path}: axes {axes}; an image read as probabilities must be stored (z, y, x)")
    level = open_zarr_array(Path(path) / key)
    if level.ndim != 3:
        raise UserError(f"{path}: level {key} has shape {level.shape}; expected (z, y, x)")
    name = multiscale.get("name") or Path(path).name.removesuffix(".zarr").removesuffix(".ome")
    return level, {"kidney": str(name)}


class CheckedU8:
    """Wrap a volume so that every block read is uint8 (floats in [0, 1] are quantised)."""

    def __init__(self, vol: ZSliceable, where: str):
        self.vol, self.where, self.shape = vol, where, tuple(vol.shape)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return quantize(np.asarray(self.vol[sl]), self.where)


def read_npz_probabilities(path: Path) -> np.ndarray:
    """The ``probabilities`` of an nnU-Net ``--save_probabilities`` .npz; a missing, truncated or malformed file is a
    one-line UserError naming it.

    Args:
        path: the .npz file.

    Returns:
        float array (classes, z, y, x) with at least 2 classes.
    """
    try:
        with np.load(path) as f:
            if "probabilities" not in f:
                raise UserError(f"{path}: no 'probabilities' array (run nnUNetv2_predict with --save_probabilities)")
            p = f["probabilities"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if p.ndim != 4 or p.shape[0] < 2:
        raise UserError(f"{path}: expected probabilities (classes, z, y, x), got {p.shape}")
    return p


def open_probabilities(path: Path | str, foreign_probabilities: bool = False) -> tuple[ZSliceable, dict]:
    """Foreground probabilities as a uint8 volume plus metadata (slice ids, kidney name).

    Args:
        path: a kidney array of a probability store (or a store holding one), an NGFF probability image
            (``*.ome.zarr`` from ``predict``), a folder of probability slices, or an nnU-Net ``.npz``.
        foreign_probabilities: read a uint8 zarr array or an NGFF image without predict's record as
            probabilities 0..255 (``--foreign_probabilities``), saying so in one stderr line.

    Returns:
        (volume, attributes). An incomplete store, one with chunks missing, a uint8 store array without
        predict's record (:func:`has_probability_record`), or an NGFF image (or a level of one) that
        ``predict`` did not write is a one-line UserError (the last two unless ``foreign_probabilities``).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if path.suffix == ".npz":
        p = read_npz_probabilities(path)
        return quantize(p[1], str(path), first_plane=0), {"kidney": path.stem}
    refuse_foreign_image(path, foreign_probabilities)
    if is_probability_image(path):
        return open_probability_image(path)
    if foreign_probabilities and image_attributes(path) is not None:
        level, attrs = open_foreign_image(path)
        accept_foreign(path, "OME-Zarr image")
        return CheckedU8(level, str(path)), attrs
    if _is_zarr(path):
        arr = open_zarr_array(path)
        attrs = dict(arr.attrs)
        if attrs.get("complete") is False:
            raise UserError(f"{path}: prediction is incomplete ({attrs.get('planes_done', 0)} of "
                            f"{arr.shape[0]} planes); run predict again to resume it")
        if arr.ndim != 3:
            raise UserError(f"{path}: expected a 3D array, got shape {arr.shape}")
        if arr.dtype == np.uint8 and not has_probability_record(attrs):
            if not foreign_probabilities:
                raise UserError(f"{path}: a uint8 zarr array without predict's record of probabilities (written by "
                                f"other software?): its values are not known to be probabilities; give predict's "
                                f"output, or pass --foreign_probabilities if they are (uint8 0..255 read as 0..1)")
            accept_foreign(path, "uint8 zarr array")
        check_chunks(arr, str(path))
        return CheckedU8(arr, str(path)), attrs
    if path.is_dir():
        stack = SliceStack(list_slices(path))
        return CheckedU8(stack, str(path)), {"kidney": path.name, "slice_names": stack.slice_names}
    raise UserError(f"{path}: not a zarr store, slice folder or .npz")


class _Binary:
    def __init__(self, vol: ZSliceable):
        self.vol, self.shape = vol, tuple(vol.shape)

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.asarray(self.vol[sl]) > 0


def open_labels(path: Path | str) -> ZSliceable:
    """Labels as a boolean volume: a folder of slices (or a Kaggle kidney folder), or a 3D file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if path.is_dir():
        folder = path / "labels" if (path / "labels").is_dir() else path
        if folder == path and (path / "images").is_dir():
            raise UserError(f"{path}: a kidney folder with images/ but no labels/ (test kidneys have no labels)")
        stack = SliceStack(list_slices(folder))
        return _LabelStack(stack)
    if path.suffix in (".tif", ".tiff"):
        try:      # uncompressed: memory-mapped, read a block at a time
            return _Binary(tifffile.memmap(path, mode="r"))
        except Exception:
            return _Binary(tifffile.imread(path))
    if path.name.endswith((".nii.gz", ".nii", ".mha", ".nrrd")):
        import SimpleITK as sitk
        return _Binary(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    if _is_zarr(path):
        return _Binary(open_zarr_array(path))
    raise UserError(f"{path}: unsupported label format")


class _LabelStack:
    """Label slices, checked to be 0/1/255 and binarised."""

    def __init__(self, stack: SliceStack):
        self.stack, self.shape = stack, stack.shape

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.stack([read_label_slice(f, self.stack.plane) for f in self.stack.files[sl]]).astype(bool)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read JSON ({e})") from None
