"""The probability store: one zarr group, one uint8 array per kidney. ``predict`` and ``stitch`` write
it with :class:`KidneyWriter`; ``tune``, ``apply``, ``submit`` and ``score`` read it.

Schema of ``<store>.zarr/<kidney>``: shape (z, y, x) in the kidney's original grid, dtype uint8, chunks
of one plane, values from :func:`quantize`. Attributes:

- ``kidney``: the kidney's name; ``spacing``: voxel size (z, y, x) in the dataset's units (µm);
- ``slice_ids``: the Kaggle id of every plane (``kidney_5_0000``, ...);
- ``encoding``: ``"uint8 = round(255 * foreground probability)"``;
- ``source``: what produced it (``{"tool": "predict", "model": {...}}`` or ``{"tool": "stitch", ...}``);
- ``planes_done``: planes written so far, in z order; ``complete``: true once every plane is written.
  A store with ``complete`` false is refused by readers and resumed by ``predict``;
- ``every_chunk_stored``: true: every chunk is written, all-zero planes included (zarr leaves out chunks
  equal to the fill value unless told otherwise), so a complete array with a chunk file missing is damaged
  and :func:`check_chunks` refuses it (zarr itself would read the missing chunk as zeros);
- ``input``: the fingerprint of the input volume (:func:`nnunet_vasculature.io.volume_source.fingerprint`: file
  count, bytes and a hash of names, sizes and content, whole or sampled), ``shape`` and, from a distributed run,
  ``slab_planes``/``params_hash``: with ``source`` and ``spacing`` the run record of
  :mod:`nnunet_vasculature.io.run_record`: a run is resumed, or a finished kidney kept, only by the same
  settings on the same input (:func:`~nnunet_vasculature.io.run_record.check_resumable`).

A slide store (``predict hubmap-kidney``: one (H, W) uint8 array per slide) is written with
:func:`create_slide_array` (every chunk stored, recorded alike) and read with :func:`open_slide_probabilities`.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.run_record import COMPLETE, RESUME, ExistingRun, RunRecord, check_resumable

if TYPE_CHECKING:      # zarr is imported by the code that opens stores
    import zarr

ENCODING = "uint8 = round(255 * foreground probability)"
SLIDE_ENCODING = "uint8 = round(255 * P(glomerulus))"     # a slide store of predict hubmap-kidney
TOLERANCE = 1e-3      # float probabilities may overshoot [0, 1] by rounding this much, no more


def quantize(prob: np.ndarray, where: str, first_plane: int | None = None) -> np.ndarray:
    """Foreground probabilities -> uint8 levels, the one rule of this package.

    uint8 input is returned as is. Float input must be finite and within [0, 1] up to ``TOLERANCE``
    (float rounding of a softmax or of interpolation); it is clipped to [0, 1] and stored as
    ``round(255 * p)``. NaN, infinities and values further outside are a UserError naming ``where``.

    Args:
        prob: probabilities (float) or levels (uint8).
        where: what messages name (a file, a kidney).
        first_plane: for a (z, y, x) block, the plane number of its first plane: a non-finite value is reported
            at its own plane (None: not named).

    Returns:
        uint8 levels.
    """
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob
    finite = np.isfinite(prob)
    if not finite.all():
        plane = ""
        if first_plane is not None and prob.ndim == 3:
            plane = f" at plane {first_plane + int(np.argmin(finite.reshape(len(prob), -1).all(axis=1)))}"
        raise UserError(f"{where}: probabilities are not finite (NaN or infinity){plane}")
    lo, hi = float(prob.min(initial=0)), float(prob.max(initial=0))
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        raise UserError(f"{where}: probabilities outside [0, 1] (min {lo:.3g}, max {hi:.3g})")
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


EVERY_CHUNK = {"write_empty_chunks": True}     # zarr array config: all-zero chunks are written too


def create_kidney_array(group: zarr.Group, kidney: str, run: RunRecord, slice_ids: Sequence[str]) -> zarr.Array:
    """A new (or replaced) kidney array of the store with the documented attributes.

    Args:
        group: the store's group.
        kidney: the kidney's name (the array's name).
        run: the run record (shape, spacing, source, input, slab size).
        slice_ids: the Kaggle id of every plane.

    Returns:
        The array (``complete`` false, ``planes_done`` 0), opened to store every chunk.
    """
    arr = group.create_array(kidney, shape=run.shape, chunks=(1, *run.shape[1:]), dtype="uint8", overwrite=True,
                             config=EVERY_CHUNK)
    arr.attrs.update({"kidney": kidney, **run.to_json(), "slice_ids": list(slice_ids), "encoding": ENCODING,
                      "complete": False, "planes_done": 0, "every_chunk_stored": True})
    return arr


def existing_run(group: zarr.Group | None, kidney: str) -> ExistingRun | None:
    """The run record of ``group[kidney]`` (None: no such array).

    Args:
        group: the store's group (None: no store yet).
        kidney: the array's name.

    Returns:
        The record (its shape the array's), whether it is complete, and its ``planes_done``.
    """
    if group is None or kidney not in group:
        return None
    arr = group[kidney]
    attrs = dict(arr.attrs)
    return ExistingRun(RunRecord.from_json({**attrs, "shape": list(arr.shape)}), bool(attrs.get("complete")),
                       int(attrs.get("planes_done", 0)))


def missing_chunk(arr: zarr.Array) -> str | None:
    """The key of the first chunk of ``arr`` not stored in its local folder (None: all there, or not a local store).

    Args:
        arr: a zarr array.

    Returns:
        The chunk's key inside the array (``1/0/0``, ``c/1/0/0``), or None.
    """
    root = getattr(arr.store, "root", None)
    if root is None:
        return None
    folder = Path(str(root)) / arr.path
    grid = [range(-(-int(s) // int(c))) for s, c in zip(arr.shape, arr.chunks)]
    for coords in itertools.product(*grid):
        key = arr.metadata.encode_chunk_key(tuple(coords))
        if not (folder / key).is_file():
            return key
    return None


def check_chunks(arr: zarr.Array, where: str) -> None:
    """Refuse (one line naming ``where`` and the first missing chunk) an array recorded as ``every_chunk_stored``
    whose chunks are not all stored.

    Args:
        arr: a complete probability array.
        where: what the message names (the store's path).
    """
    if not arr.attrs.get("every_chunk_stored"):
        return          # written by other code: zarr's own semantics (missing chunks are the fill value)
    stored, total = int(arr.nchunks_initialized), int(arr.nchunks)
    if stored < total:
        key = missing_chunk(arr)
        first = "chunks" if key is None else f"chunk {arr.path}/{key}" if arr.path else f"chunk {key}"
        raise UserError(f"{where}: {total - stored} of {total} chunks are missing ({first} deleted or lost; they "
                        f"would read as zeros): predict it again")


METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs")      # zarr format 3, format 2


DAMAGED = object()      # a metadata file that is there but not JSON (truncated, overwritten)


def metadata_documents(path: Path, names: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """The metadata files of one zarr node folder that exist, parsed: ``(name, document)`` in ``names``' order,
    the document :data:`DAMAGED` where the file is not JSON.

    Args:
        path: the node's folder.
        names: the metadata file names to look for (e.g. :data:`METADATA_FILES`).

    Returns:
        An iterator over the files found.
    """
    for name in names:
        try:
            text = (Path(path) / name).read_bytes()
        except OSError:
            continue
        try:
            yield name, json.loads(text)
        except ValueError:
            yield name, DAMAGED


def damaged_metadata(path: Path, depth: int = 4) -> Path | None:
    """The first metadata file of the local zarr store at ``path`` that is not JSON (truncated, overwritten), in
    the node itself and the groups under it (``depth`` levels; chunk folders are not walked).

    Args:
        path: a store, group or array folder.
        depth: how many levels of groups to look into.

    Returns:
        The file, or None when every metadata file reads as JSON (or ``path`` is no folder).
    """
    path = Path(path)
    group = False
    for name, doc in metadata_documents(path, METADATA_FILES):
        if doc is DAMAGED:
            return path / name
        group = group or name == ".zgroup" or (name == "zarr.json" and isinstance(doc, dict)
                                               and doc.get("node_type") == "group")
    if group and depth > 0:
        for child in sorted(path.iterdir()):
            found = damaged_metadata(child, depth - 1) if child.is_dir() else None
            if found is not None:
                return found
    return None


def unreadable_store(path: Path | str, error: Exception, what: str = "a readable zarr store") -> UserError:
    """The one-line error for a zarr store that zarr could not open: the damaged metadata file when there is one.

    Args:
        path: the store (group or array) given.
        error: zarr's exception.
        what: what ``path`` should have been, for the message.

    Returns:
        The UserError to raise.
    """
    damaged = damaged_metadata(Path(path))
    if damaged is not None:
        return UserError(f"{damaged}: truncated or not JSON (the store's metadata is damaged: restore it, or "
                         f"predict again)")
    return UserError(f"{path}: not {what} ({type(error).__name__}: {error})")


def store_path(group: zarr.Group) -> str:
    """The store's path for messages (a local store's folder; the store's own text otherwise)."""
    return str(getattr(group.store, "root", group.store))


def open_output(out: Path) -> zarr.Group | None:
    """The zarr group of an existing output of ``predict`` (a store or an ``.ome.zarr`` image), read-only.

    Args:
        out: the output path.

    Returns:
        The group, or None when there is none yet (no folder, or an empty one); an unreadable store is a one-line
        UserError.
    """
    import zarr
    if not Path(out).is_dir() or not any(Path(out).iterdir()):
        return None
    damaged = damaged_metadata(Path(out))       # also a member's: its run record is read before any work
    if damaged is not None:
        raise unreadable_store(out, ValueError())
    try:
        return zarr.open_group(str(out), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a bad store
        raise unreadable_store(out, e) from None


def _open_existing(group: zarr.Group, kidney: str) -> zarr.Array:
    """``group[kidney]`` opened to store every chunk (zarr's array config is not kept in the store)."""
    return group[kidney].with_config(EVERY_CHUNK)


class KidneyWriter:
    """Writes one kidney's planes into ``group[kidney]`` in z order, buffered, resumable.

    ``source`` identifies the run, ``input_fingerprint`` its input: an interrupted array is resumed only by
    a writer with the same shape, source and input; a complete one is refused unless ``overwrite``.
    :meth:`slab` writes planes [start, stop) of an existing array for one task of a distributed run
    (without touching the attributes, which the run's client keeps).
    """

    def __init__(self, group: zarr.Group, kidney: str, shape: tuple[int, int, int], spacing: Sequence[float],
                 slice_ids: list[str], source: dict, overwrite: bool = False, flush_planes: int = 8,
                 input_fingerprint: dict | None = None):
        if len(slice_ids) != shape[0]:
            raise ValueError(f"{kidney}: {len(slice_ids)} slice ids for {shape[0]} planes")
        self.kidney, self.flush_planes = kidney, flush_planes
        self.start, self.track = 0, True
        run = RunRecord(source, shape, spacing, input_fingerprint)
        existing = existing_run(group, kidney)
        state = check_resumable(existing, run, store_path(group), kidney, overwrite)
        if state == COMPLETE:
            raise UserError(f"{store_path(group)}: '{kidney}' is already written (pass --overwrite)")
        if state == RESUME:
            arr = _open_existing(group, kidney)
            self.start = existing.planes_done
        else:
            arr = create_kidney_array(group, kidney, run, slice_ids)
        self.arr, self.stop = arr, int(shape[0])
        self.buf: list[np.ndarray] = []
        self.buf_start = self.start

    @classmethod
    def slab(cls, group: zarr.Group, kidney: str, start: int, stop: int, flush_planes: int = 8) -> KidneyWriter:
        """A writer of planes [start, stop) of the existing ``group[kidney]`` that leaves its attributes alone.

        Args:
            group: the store's group.
            kidney: the array's name.
            start: first plane.
            stop: end of the planes.
            flush_planes: planes written at a time.

        Returns:
            The writer; :meth:`close` checks that every plane of the slab was written.
        """
        writer = cls.__new__(cls)
        writer.kidney, writer.flush_planes, writer.track = kidney, flush_planes, False
        writer.arr, writer.start, writer.stop = _open_existing(group, kidney), int(start), int(stop)
        writer.buf, writer.buf_start = [], int(start)
        return writer

    def __call__(self, z: int, planes: np.ndarray) -> None:
        """Write planes ``z, z + 1, ...`` (float probabilities or uint8 levels); z must follow on."""
        if z != self.buf_start + len(self.buf):
            raise RuntimeError(f"{self.kidney}: plane {z} out of order")
        self.buf.extend(quantize(planes, f"{self.kidney} plane {z}"))
        if len(self.buf) >= self.flush_planes:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            end = self.buf_start + len(self.buf)
            self.arr[self.buf_start:end] = np.stack(self.buf)
            if self.track:
                self.arr.attrs["planes_done"] = end
            self.buf, self.buf_start = [], end

    def close(self) -> None:
        """Write what is buffered; mark the array complete (a slab: check that it is whole)."""
        self.flush()
        if self.buf_start != self.stop:
            raise RuntimeError(f"{self.kidney}: planes {self.start}..{self.buf_start} of {self.start}..{self.stop} "
                               f"written")
        if self.track:
            self.arr.attrs["complete"] = True


def has_probability_record(attrs: dict, encoding: str = ENCODING) -> bool:
    """Whether a store array's attributes hold the record of ``predict`` (or ``stitch``): ``source``, and the
    ``encoding`` where one is recorded (the rule of :func:`~nnunet_vasculature.io.ngff.is_probability_image` for
    an image).

    Args:
        attrs: the array's attributes.
        encoding: the encoding its writer records (a kidney store's :data:`ENCODING`; a slide store's is its own).

    Returns:
        True or False.
    """
    return isinstance(attrs.get("source"), dict) and attrs.get("encoding", encoding) == encoding


def accept_foreign(path: Path | str, what: str) -> None:
    """The one stderr line saying that an input without predict's record is read as probabilities (the user
    passed ``--foreign_probabilities``).

    Args:
        path: the input.
        what: what it is, e.g. ``"uint8 zarr array"``.
    """
    print(f"warning: {path}: {what} accepted without predict's record of probabilities (--foreign_probabilities): "
          f"uint8 0..255 read as 0..1", file=sys.stderr)


PREDICT_OUTPUT = "a uint8 zarr array or OME-Zarr image that predict did not write"
SLIDE_OUTPUT = "a slide store (<id>.zarr) that predict hubmap-kidney did not write"


def add_foreign_flag(parser: Any, what: str = PREDICT_OUTPUT) -> None:
    """``--foreign_probabilities`` on a command's parser: the one spelling and help of the flag that lets
    :func:`has_probability_record`'s refusal be overridden knowingly (:func:`accept_foreign` then says so).

    Args:
        parser: the argparse parser.
        what: what the command would otherwise refuse (e.g. :data:`SLIDE_OUTPUT`).
    """
    parser.add_argument("--foreign_probabilities", action="store_true",
                        help=f"read {what} (no record of probabilities) as probabilities 0..255 = 0..1; refused "
                             f"without it")


def create_slide_array(path: Path, height: int, width: int) -> zarr.Array:
    """A new slide probability store (``predict hubmap-kidney``): (H, W) uint8, every chunk stored.

    Args:
        path: the ``<id>.zarr`` path.
        height: slide height (px).
        width: slide width (px).

    Returns:
        The array (recorded ``every_chunk_stored``).
    """
    import zarr
    arr = zarr.create_array(str(path), shape=(height, width), dtype="uint8", fill_value=0, overwrite=True,
                            chunks=(min(height, 4096), min(width, 1024)), config=EVERY_CHUNK)
    arr.attrs["every_chunk_stored"] = True
    return arr


def open_slide_probabilities(path: Path, foreign_probabilities: bool = False) -> Any:
    """A slide probability store for reading, checked: (H, W) uint8, with the record of ``predict hubmap-kidney``
    (a ``source``), no chunk missing.

    Args:
        path: the ``<id>.zarr`` path.
        foreign_probabilities: read a store without predict's record as probabilities 0..255
            (``--foreign_probabilities``), saying so in one stderr line.

    Returns:
        The zarr array, its reads of a chunk that cannot be decoded a one-line UserError naming the store
        (:class:`~nnunet_vasculature.io.decoded.DecodedArray`); a one-line UserError for anything else, a store
        without predict's record included (unless ``foreign_probabilities``).
    """
    import zarr
    try:
        arr = zarr.open_array(str(path), mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises many types for a bad store
        raise unreadable_store(path, e, "a slide probability store") from None
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise UserError(f"{path}: expected a (H, W) uint8 array, got {arr.shape} {arr.dtype}")
    if not has_probability_record(dict(arr.attrs), SLIDE_ENCODING):
        if not foreign_probabilities:
            raise UserError(f"{path}: a slide probability store without the record of predict hubmap-kidney "
                            f"(written by other software?): its values are not known to be probabilities; give "
                            f"predict hubmap-kidney's output, or pass --foreign_probabilities if they are (uint8 "
                            f"0..255 read as 0..1)")
        accept_foreign(path, "slide probability store")
    check_chunks(arr, str(path))
    from nnunet_vasculature.io.decoded import DecodedArray
    return DecodedArray(arr, Path(path))


__all__ = ["ENCODING", "EVERY_CHUNK", "METADATA_FILES", "DAMAGED", "metadata_documents", "quantize", "damaged_metadata",
           "unreadable_store",
           "store_path", "create_kidney_array", "existing_run", "open_output",
           "missing_chunk", "check_chunks", "KidneyWriter",
           "create_slide_array", "open_slide_probabilities", "has_probability_record", "accept_foreign",
           "add_foreign_flag", "PREDICT_OUTPUT", "SLIDE_OUTPUT",
           "SLIDE_ENCODING"]
