"""Probabilities as an NGFF OME-Zarr multiscale image that napari, Neuroglancer, Fiji/MoBIE open, and a
binary mask as its NGFF ``labels/`` image.

Layout of ``out.ome.zarr`` (NGFF 0.4 on zarr format 2 by default, the most widely read; 0.5 on zarr
format 3 with ``version="0.5"``):

- arrays ``0``, ``1``, ... : uint8 (z, y, x) levels, each half the previous one (``ceil``), level ``k``
  the 2x2x2 block mean of level ``k - 1`` (``labels/``: the block maximum, so thin vessels stay visible);
  chunks ``(chunk_depth, chunk_yx, chunk_yx)``; values from :func:`~nnunet_vasculature.io.store.quantize`
  (labels: 0 background, 1 vessel);
- ``multiscales``: axes z, y, x (space, micrometer); level ``k``: scale ``spacing * 2**k`` and translation
  ``translation + (2**k - 1) / 2 * spacing`` (scale listed first), so level 0 overlays the source level
  it was predicted from and every level overlays level 0;
- ``nnunet_vasculature`` (group attribute): ``kidney``, ``translation``, ``encoding``, the run record of
  :mod:`nnunet_vasculature.io.run_record` (``source``, ``shape``, ``spacing``, ``input``, a distributed run's
  ``slab_planes``/``params_hash``; as in the probability store), ``provenance`` (source dataset, DOI, level,
  ...), ``slice_ids`` (when given), ``chunk_depth``, ``complete``; array ``0``'s ``planes_done`` counts the
  planes written, always a multiple of ``chunk_depth`` (or the depth), so a run resumes chunk-aligned;
- every array has ``every_chunk_stored``: true: all-zero chunks are written too, so a chunk file missing
  from a complete image is damage, refused by :func:`open_image` in one line naming the store and the chunk.

:class:`NgffWriter` has :class:`~nnunet_vasculature.io.store.KidneyWriter`'s interface (planes in z
order through ``writer(z, planes)``, ``start``, ``flush()``, ``close()``); ``close()`` builds the pyramid
and sets ``complete``. :func:`is_probability_image`, :func:`open_image` and :func:`existing_run` read the
image back (``submit``, ``apply``, ``tune`` and ``score`` through :mod:`nnunet_vasculature.io.volumes`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.run_record import COMPLETE, NEW, ExistingRun, RunRecord, check_resumable
from nnunet_vasculature.io.store import (
    DAMAGED,
    ENCODING,
    EVERY_CHUNK,
    check_chunks,
    metadata_documents,
    quantize,
    store_path,
    unreadable_store,
)

ATTRS_KEY = "nnunet_vasculature"
VERSIONS = ("0.4", "0.5")
LABEL_ENCODING = "uint8: 0 background, 1 vessel"
THUMBNAIL = 64              # the pyramid goes on until every axis of the last level is at most this


def level_shapes(shape: Sequence[int], levels: int | None = None) -> list[tuple[int, int, int]]:
    """Shapes of the pyramid's levels (each ``ceil(previous / 2)``).

    Args:
        shape: level 0's (z, y, x).
        levels: how many (None: until every axis is at most :data:`THUMBNAIL`).

    Returns:
        the shapes, level 0 first.
    """
    shapes = [tuple(int(s) for s in shape)]
    while (len(shapes) < levels) if levels is not None else max(shapes[-1]) > THUMBNAIL:
        if max(shapes[-1]) == 1:
            break
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def level_transforms(spacing: Sequence[float], translation: Sequence[float], levels: int) -> list[list[dict]]:
    """NGFF ``coordinateTransformations`` of each level (scale first, then translation).

    Args:
        spacing: level 0's voxel size (z, y, x), µm.
        translation: level 0's voxel (0, 0, 0) centre, µm.
        levels: how many levels.

    Returns:
        one list of transforms per level.
    """
    out = []
    for k in range(levels):
        f = 2 ** k
        out.append([{"type": "scale", "scale": [float(s) * f for s in spacing]},
                    {"type": "translation", "translation": [float(t) + (f - 1) / 2 * float(s)
                                                            for t, s in zip(translation, spacing)]}])
    return out


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """2x2x2 block mean of uint8 levels, rounded (odd edges repeat their last plane/row/column).

    Args:
        block: (z, y, x) uint8.

    Returns:
        (ceil(z/2), ceil(y/2), ceil(x/2)) uint8.
    """
    even = _pad_even(block).astype(np.uint16)
    z, y, x = even.shape
    return np.rint(even.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))).astype(np.uint8)


def downsample_max(block: np.ndarray) -> np.ndarray:
    """2x2x2 block maximum (labels: a vessel voxel keeps its block).

    Args:
        block: (z, y, x) uint8.

    Returns:
        (ceil(z/2), ceil(y/2), ceil(x/2)) uint8.
    """
    even = _pad_even(block)
    z, y, x = even.shape
    return even.reshape(z // 2, 2, y // 2, 2, x // 2, 2).max(axis=(1, 3, 5))


def _pad_even(block: np.ndarray) -> np.ndarray:
    pad = [(0, s % 2) for s in block.shape]
    return np.pad(block, pad, mode="edge") if any(p for _, p in pad) else block


def open_group(target: Any, version: str, mode: str = "a") -> Any:
    """The zarr group of an output (a path is opened or created with the zarr format of ``version``).

    Args:
        target: a path or an open ``zarr.Group``.
        version: ``"0.4"`` (zarr format 2) or ``"0.5"`` (zarr format 3).
        mode: zarr's open mode for a path.

    Returns:
        the group.
    """
    import zarr
    if version not in VERSIONS:
        raise UserError(f"NGFF version {version}: one of {', '.join(VERSIONS)}")
    zarr_format = 2 if version == "0.4" else 3
    if isinstance(target, (str, Path)):
        path = Path(target)
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: exists and is not a folder")
        other = {2: "zarr.json", 3: ".zgroup"}[zarr_format]
        if (path / other).is_file():
            raise UserError(f"{path}: a zarr format {5 - zarr_format} store; NGFF {version} needs format "
                            f"{zarr_format} (pass --overwrite to a new path)")
        own = {2: ".zgroup", 3: "zarr.json"}[zarr_format]
        if path.is_dir() and any(path.iterdir()) and not (path / own).is_file():
            raise UserError(f"{path}: exists and is not a zarr store")
        return zarr.open_group(str(path), mode=mode, zarr_format=zarr_format)
    if target.metadata.zarr_format != zarr_format:
        raise UserError(f"{target.store}: zarr format {target.metadata.zarr_format}; NGFF {version} needs "
                        f"format {zarr_format}")
    return target


def ngff_version(group: Any) -> str:
    """The NGFF version of an image group written by this module (or anyone: ``ome`` key or multiscales).

    Args:
        group: the image group.

    Returns:
        ``"0.4"`` or ``"0.5"``.
    """
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), dict):
        return str(attrs["ome"].get("version", "0.5"))
    if isinstance(attrs.get("multiscales"), list) and attrs["multiscales"]:
        return str(attrs["multiscales"][0].get("version", "0.4"))
    raise UserError(f"{group.store}: not an NGFF image (no multiscales)")


def _multiscale(name: str, version: str, transforms: list[list[dict]], method: str) -> dict:
    ms = {"name": name, "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
          "datasets": [{"path": str(k), "coordinateTransformations": t} for k, t in enumerate(transforms)],
          "type": method, "metadata": {"description": f"2x2x2 block {method} of the previous level",
                                       "written_by": "nnunet-vasculature"}}
    return {"version": "0.4", **ms} if version == "0.4" else ms


def _ome(version: str, payload: dict) -> dict:
    """NGFF metadata of a group: top-level keys (0.4) or under ``ome`` (0.5)."""
    if version == "0.4":
        return payload
    return {"ome": {"version": "0.5", **payload}}


class _PyramidWriter:
    """Streams level 0 of a multiscale uint8 image in z order, chunk row by chunk row; builds the rest."""

    def __init__(self, group: Any, name: str, run: RunRecord, translation: Sequence[float], meta: dict,
                 ngff: Callable, version: str, convert: Callable, downsample: Callable, overwrite: bool,
                 chunk_depth: int, chunk_yx: int, levels: int | None):
        if len(run.shape) != 3 or min(run.shape) < 1:
            raise ValueError(f"{name}: shape {run.shape}; expected three non-empty axes")
        if chunk_depth < 1 or chunk_yx < 1:
            raise ValueError("chunk_depth and chunk_yx must be at least 1")
        self.group, self.name, self.version = group, name, version
        self.convert, self.downsample = convert, downsample
        self.shape = run.shape
        self.chunk_depth = min(int(chunk_depth), self.shape[0])
        static = {**meta, "kidney": name, **run.to_json(), "translation": [float(t) for t in translation],
                  "chunk_depth": self.chunk_depth}
        self.start = self._resume(run, overwrite)
        if self.start is None:
            self.start = 0
            shapes = level_shapes(self.shape, levels)
            for key in [k for k in group.keys()]:
                del group[key]
            for k, lshape in enumerate(shapes):
                chunks = (min(self.chunk_depth, lshape[0]), min(chunk_yx, lshape[1]), min(chunk_yx, lshape[2]))
                self._create_array(str(k), lshape, chunks)
            group.attrs.put({**_ome(version, ngff(name, level_transforms(run.spacing, translation, len(shapes)))),
                             ATTRS_KEY: {**static, "complete": False}})
            self._array(0).attrs["planes_done"] = 0
        self.buf: list[np.ndarray] = []
        self.buf_start = self.start

    def _resume(self, run: RunRecord, overwrite: bool) -> int | None:
        """Planes already written by an interrupted run with the same settings; None: start afresh."""
        if overwrite:
            return None
        existing = existing_run(self.group)
        where = group_path(self.group)
        state = check_resumable(existing, run, where, self.name)
        if state == NEW:
            return None
        if state == COMPLETE:
            raise UserError(f"{where}: '{self.name}' is already written (pass --overwrite)")
        depth = dict(self.group.attrs)[ATTRS_KEY].get("chunk_depth")
        if depth != self.chunk_depth or self._array(0).chunks[0] != self.chunk_depth:
            raise UserError(f"{where}: '{self.name}' holds an interrupted run made with other settings (chunks of "
                            f"{depth} planes, not {self.chunk_depth}; pass --overwrite to replace it)")
        return existing.planes_done

    def _create_array(self, key: str, shape: tuple, chunks: tuple) -> Any:
        import zarr
        if self.version == "0.4":
            from numcodecs import Blosc
            arr = self.group.create_array(key, shape=shape, chunks=chunks, dtype="uint8", fill_value=0,
                                          compressors=Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE),
                                          chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True,
                                          config=EVERY_CHUNK)
        else:
            arr = self.group.create_array(key, shape=shape, chunks=chunks, dtype="uint8", fill_value=0,
                                          compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=5,
                                                                             shuffle="bitshuffle"),
                                          dimension_names=["z", "y", "x"], overwrite=True, config=EVERY_CHUNK)
        arr.attrs["every_chunk_stored"] = True
        return arr

    def _array(self, k: int) -> Any:
        """Level ``k``, opened to store every chunk (zarr's array config is not kept in the store)."""
        return self.group[str(k)].with_config(EVERY_CHUNK)

    def __call__(self, z: int, planes: np.ndarray) -> None:
        """Write planes ``z, z + 1, ...``; z must follow on from the planes before.

        Args:
            z: the first plane's index.
            planes: (n, y, x) values (see the subclass).
        """
        if z != self.buf_start + len(self.buf):
            raise RuntimeError(f"{self.name}: plane {z} out of order")
        planes = self.convert(np.asarray(planes), f"{self.name} plane {z}")
        if planes.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.name}: planes of {planes.shape[1:]}, the image's are {self.shape[1:]}")
        self.buf.extend(planes)
        if len(self.buf) >= self.chunk_depth:
            self.flush()

    def flush(self) -> None:
        """Write the whole chunk rows buffered (and the last, partial one once the last plane is in)."""
        end = self.buf_start + len(self.buf)
        if end >= self.shape[0]:
            n = len(self.buf)
        else:
            n = (end // self.chunk_depth) * self.chunk_depth - self.buf_start
        if n <= 0:
            return
        arr = self._array(0)
        arr[self.buf_start:self.buf_start + n] = np.stack(self.buf[:n])
        self.buf, self.buf_start = self.buf[n:], self.buf_start + n
        arr.attrs["planes_done"] = self.buf_start

    def written_elsewhere(self, end: int) -> None:
        """Record level 0's planes up to ``end`` as written by other writers (the tasks of a distributed run,
        each writing whole chunk rows of array ``0``), so that :meth:`close` can build the pyramid.

        Args:
            end: planes [0, end) are written.
        """
        if self.buf:
            raise RuntimeError(f"{self.name}: planes buffered here; cannot take planes written elsewhere")
        self.buf_start = int(end)
        self._array(0).attrs["planes_done"] = self.buf_start

    def close(self) -> None:
        """Write what is left, build levels 1, 2, ... from level 0 and mark the image complete."""
        self.flush()
        if self.buf_start != self.shape[0]:
            raise RuntimeError(f"{self.name}: {self.buf_start} of {self.shape[0]} planes written")
        keys = sorted(int(k) for k in self.group.array_keys() if k.isdigit())
        rows = sum(math.ceil(self._array(k).shape[0] / self._array(k).chunks[0]) for k in keys[1:])
        with tqdm(total=rows, desc=f"pyramid {self.name}", unit="chunk row", disable=rows < 8) as bar:
            for k in keys[1:]:
                source, target = self._array(k - 1), self._array(k)
                depth = target.chunks[0]
                for z0 in range(0, target.shape[0], depth):
                    z1 = min(target.shape[0], z0 + depth)
                    target[z0:z1] = self.downsample(np.asarray(source[2 * z0:min(source.shape[0], 2 * z1)]))
                    bar.update(1)
        meta = dict(self.group.attrs[ATTRS_KEY])
        self.group.attrs[ATTRS_KEY] = {**meta, "complete": True}


class NgffWriter(_PyramidWriter):
    """One volume's uint8 probabilities as an NGFF multiscale image in ``group`` (the image group itself,
    e.g. ``out.ome.zarr``; a path is created), written plane by plane in z order, resumable.

    Same first arguments and call as :class:`~nnunet_vasculature.io.store.KidneyWriter`; ``translation``,
    ``provenance`` (source dataset, DOI, level, ...) describe the source level so the output overlays it.
    ``levels``: pyramid levels (None: down to :data:`THUMBNAIL`). ``version``: ``"0.4"`` or ``"0.5"``."""

    def __init__(self, group: Any, kidney: str, shape: Sequence[int], spacing: Sequence[float],
                 slice_ids: Sequence[str] | None, source: dict, overwrite: bool = False, *,
                 input_fingerprint: dict | None = None, slab_planes: int | None = None,
                 translation: Sequence[float] = (0.0, 0.0, 0.0), provenance: dict | None = None,
                 chunk_depth: int = 64, chunk_yx: int = 256, levels: int | None = None, version: str = "0.4"):
        if slice_ids is not None and len(slice_ids) != shape[0]:
            raise ValueError(f"{kidney}: {len(slice_ids)} slice ids for {shape[0]} planes")
        group = open_group(group, version)
        meta = {"encoding": ENCODING, "provenance": provenance or {},
                **({"slice_ids": list(slice_ids)} if slice_ids is not None else {})}
        ngff = lambda name, transforms: {"multiscales": [_multiscale(name, version, transforms, "mean")]}
        run = RunRecord(source, shape, spacing, input_fingerprint, slab_planes)
        super().__init__(group, kidney, run, translation, meta, ngff, version, quantize, downsample_mean,
                         overwrite, chunk_depth, chunk_yx, levels)


def _binary(planes: np.ndarray, where: str) -> np.ndarray:
    if planes.dtype == bool:
        return planes.astype(np.uint8)
    if not np.isin(planes, (0, 1)).all():
        raise UserError(f"{where}: mask values other than 0 and 1")
    return planes.astype(np.uint8)


class NgffLabelsWriter(_PyramidWriter):
    """A binary mask (0/1 planes in z order) as the NGFF label image ``labels/<name>`` of the image
    written by :class:`NgffWriter` in ``image`` (same shape, levels, chunks, scale and translation)."""

    def __init__(self, image: Any, source: dict, overwrite: bool = False, *, name: str = "vessels",
                 rgba: Sequence[int] = (255, 0, 0, 255)):
        import zarr
        group = image if isinstance(image, zarr.Group) else zarr.open_group(str(image), mode="a")
        meta = dict(group.attrs).get(ATTRS_KEY)
        if not isinstance(meta, dict) or "0" not in group:
            raise UserError(f"{group.store}: not an image written by nnunet-vasculature predict")
        if not meta.get("complete"):
            raise UserError(f"{group.store}: the image is incomplete (run predict again to finish it)")
        version = ngff_version(group)
        labels = group.require_group("labels")
        names = dict(labels.attrs).get("labels", dict(labels.attrs).get("ome", {}).get("labels", []))
        labels.attrs.put(_ome(version, {"labels": sorted(set(names) | {name})}))
        target = labels.require_group(name)
        image_label = {"colors": [{"label-value": 1, "rgba": [int(c) for c in rgba]}],
                       "source": {"image": "../../"}}
        if version == "0.4":
            image_label = {"version": "0.4", **image_label}
        ngff = lambda n, transforms: {"multiscales": [_multiscale(n, version, transforms, "max")],
                                      "image-label": image_label}
        level0 = group["0"]
        levels = sum(1 for k in group.array_keys() if k.isdigit())
        label_meta = {"encoding": LABEL_ENCODING, "image": meta["kidney"], "provenance": meta.get("provenance", {})}
        super().__init__(target, name, RunRecord(source, level0.shape, meta["spacing"]), meta["translation"],
                         label_meta, ngff, version, _binary, downsample_max, overwrite, meta["chunk_depth"],
                         level0.chunks[1], levels)


# ---- reading our output back ---------------------------------------------------------------------
def group_path(group: Any) -> str:
    """A group's path for messages (a local store's folder, plus the group's path inside it)."""
    return f"{store_path(group)}/{group.path}" if group.path else store_path(group)


def image_attributes(path: Path | str) -> dict | None:
    """The attributes of the NGFF image group at ``path`` (anyone's), read from its metadata file.

    Args:
        path: a path.

    Returns:
        The group's attributes when they hold NGFF ``multiscales`` (0.4, or 0.5 under ``ome``); None otherwise.
        A metadata file there that is not JSON (truncated) is a one-line UserError naming it.
    """
    path = Path(path)
    for name, attrs in metadata_documents(path, (".zattrs", "zarr.json")):
        if attrs is DAMAGED:     # a damaged image is named, not taken for a folder of another kind
            raise UserError(f"{path / name}: truncated or not JSON (the store's metadata is damaged: restore it, "
                            f"or predict again)")
        attrs = attrs.get("attributes", {}) if name == "zarr.json" and isinstance(attrs, dict) else attrs
        if isinstance(attrs, dict) and ("multiscales" in attrs or isinstance(attrs.get("ome"), dict)):
            return attrs
    return None


def is_probability_image(path: Path | str) -> bool:
    """Whether ``path`` is an NGFF probability image written by ``predict`` (``out.ome.zarr``).

    Args:
        path: a path.

    Returns:
        True for an NGFF image whose attributes hold this package's record of probabilities (not labels).
    """
    attrs = image_attributes(path)
    meta = (attrs or {}).get(ATTRS_KEY)
    return isinstance(meta, dict) and meta.get("encoding", ENCODING) == ENCODING


def refuse_foreign_image(path: Path | str, accept_foreign: bool = False) -> None:
    """Refuse (one line) an NGFF image, or a level of one, that is not a probability image of ``predict``:
    its values (an OME-Zarr scan, a label image) are not probabilities and would be thresholded as if they were.
    A level of predict's image is refused either way (the image itself is the input).

    Args:
        path: a path given as probabilities.
        accept_foreign: accept an image without the record (``--foreign_probabilities``: the user knows it holds
            probabilities).
    """
    path = Path(path)
    for image in (path, path.parent):
        if image_attributes(image) is None:
            continue
        if is_probability_image(image):
            if image != path:
                raise UserError(f"{path}: a level of the probability image {image}; give the image itself")
            return
        if accept_foreign:
            return
        raise UserError(f"{image}: an OME-Zarr image without predict's record of probabilities (a scan or a label "
                        f"image?): its values are not probabilities; give predict's output, or pass "
                        f"--foreign_probabilities if they are (uint8 0..255 read as 0..1)")


def existing_run(group: Any) -> ExistingRun | None:
    """The run record of the image in ``group`` (None: an empty group).

    Args:
        group: an image group (``out.ome.zarr``, or ``labels/<name>``).

    Returns:
        The record (its shape level 0's), whether the image is complete, and level 0's ``planes_done``;
        a group holding anything else is a one-line UserError.
    """
    attrs = dict(group.attrs)
    if not attrs and not list(group.keys()):
        return None
    meta = attrs.get(ATTRS_KEY)
    if not isinstance(meta, dict) or "0" not in group:
        raise UserError(f"{group_path(group)}: holds another zarr group or image (pass --overwrite)")
    level0 = group["0"]
    return ExistingRun(RunRecord.from_json({**meta, "shape": list(level0.shape)}), bool(meta.get("complete")),
                       int(level0.attrs.get("planes_done", 0)))


def open_image(path: Path | str) -> tuple[Any, dict]:
    """Level 0 of a probability image written by ``predict``, checked: complete, (z, y, x) uint8, no chunk missing.

    Args:
        path: the image group (``out.ome.zarr``).

    Returns:
        (the zarr array, the image's ``nnunet_vasculature`` attributes: ``kidney``, ``spacing``,
        ``translation``, ``slice_ids`` when recorded, ``source``, ``provenance``, ...).
    """
    import zarr
    try:
        group = zarr.open_group(str(path), mode="r")
        meta = dict(group.attrs)[ATTRS_KEY]
        arr = group["0"]
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a bad store
        raise unreadable_store(path, e, "a readable probability image") from None
    if not meta.get("complete"):
        raise UserError(f"{path}: prediction is incomplete ({arr.attrs.get('planes_done', 0)} of "
                        f"{arr.shape[0]} planes); run predict again to resume it")
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise UserError(f"{path}: level 0 is {arr.shape} {arr.dtype}; expected (z, y, x) uint8")
    check_chunks(arr, str(path))
    return arr, meta


__all__ = ["ATTRS_KEY", "VERSIONS", "LABEL_ENCODING", "level_shapes", "level_transforms", "downsample_mean",
           "downsample_max", "open_group", "ngff_version", "NgffWriter", "NgffLabelsWriter", "group_path",
           "image_attributes", "is_probability_image", "refuse_foreign_image", "existing_run", "open_image"]
