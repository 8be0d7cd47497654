"""The bottom of the input stack: :class:`VolumeSource`, what every reader hands to prediction, and
:func:`fingerprint`, what identifies it in an output. Imports no reader (only :mod:`..errors`).

What a VolumeSource provides:

- ``name``: the volume's name (the store's array name);
- ``shape``: (z, y, x) voxels; ``spacing``: voxel size (z, y, x) in the dataset's units (µm);
- ``slice_ids``: one id per z-plane as outputs record them (Kaggle ids ``kidney_5_0000``, ..., given by
  whoever opens the input; :mod:`nnunet_vasculature.io.sennet`), or empty;
- ``parts``: ``[(z0, z1, reader)]`` covering [0, z) in order, ``reader(a, b)`` giving planes [z0 + a, z0 + b)
  as an (n, y, x) array; :meth:`VolumeSource.read` (planes [z0, z1) as float32) is built on them;
- ``intensity``: the intensity mapping applied at conversion (:mod:`nnunet_vasculature.io.intensity`), or None;
- ``files``: the files the volume is read from (for :func:`fingerprint`: an interrupted prediction is resumed
  only on the same input). A source without files (in memory, remote) is fingerprinted by the content of its
  first, middle and last planes instead;
- for one level of a multiscale input (:mod:`nnunet_vasculature.io.pyramid`), what outputs need to overlay
  it: ``level`` (None for a single-resolution input), ``translation`` (µm, the centre of voxel 0),
  ``chunk_depth`` (planes per read of the store; 0 when not read by chunk rows), ``provenance`` (what the
  data is) and ``choice`` (the line saying why this level was read);
- ``spacing_source``: where the voxel size came from (:data:`SPACING_SOURCES`: a known Kaggle name,
  ``--spacing``, the input's metadata, the folder's name, the HOA catalogue, or assumed), printed by
  ``predict`` for every kidney;
- ``chunk_count`` / ``absent_chunks``: for a chunked store (OME-Zarr, N5), the chunks of the level read and how
  many of them are not stored (read as the fill value, zarr's rule); 0 / 0 when not counted.

:meth:`VolumeSource.read` refuses planes that are not finite (NaN or infinity in a float input), naming the
input and the plane, so that such an input is never reported as a fault of the prediction.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_vasculature.errors import UserError

KNOWN_NAME = "known name"              # the competition's voxel size of a Kaggle kidney name (io.sennet)
GIVEN = "--spacing"                    # given on the command line
METADATA = "the input's metadata"      # the store's / image header's / conversion record's
FOLDER_NAME = "the folder's name"      # a JPEG 2000 folder named ..._25.08um_...
CATALOGUE = "the HOA catalogue"        # hoa-tools' voxel size of a remote dataset
ASSUMED = "assumed"                    # nothing said it (e.g. an image header's default 1)
SPACING_SOURCES = (KNOWN_NAME, GIVEN, METADATA, FOLDER_NAME, CATALOGUE, ASSUMED)


@dataclass
class VolumeSource:
    """A (z, y, x) volume with spacing in the units of the dataset (µm for SenNet and HOA)."""
    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    slice_ids: list[str]
    parts: list = field(default_factory=list)     # [(z0, z1, reader)] covering the volume in order
    intensity: dict | None = None                 # set when the values read are intensity-mapped (io.intensity)
    files: list[Path] = field(default_factory=list)     # the files read (for the fingerprint)
    level: int | None = None                      # pyramid level read (None: a single-resolution input)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)    # µm, centre of voxel (0, 0, 0)
    chunk_depth: int = 0                          # planes per read of a chunked store (0: not chunked)
    provenance: dict = field(default_factory=dict)    # what the data is (recorded in outputs)
    choice: str = ""                              # why this level was read
    spacing_source: str = ""                      # where ``spacing`` came from (SPACING_SOURCES; "": caller's)
    chunk_count: int = 0                          # chunks of the level read (0: not a counted chunked store)
    absent_chunks: int = 0                        # of them not stored: read as the fill value

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes [z0, z1) as float32.

        Args:
            z0: first plane.
            z1: one past the last plane.

        Returns:
            (n, y, x) array.
        """
        out = []
        for a, b, reader in self.parts:
            lo, hi = max(a, z0), min(b, z1)
            if lo < hi:
                raw = np.asarray(reader(lo - a, hi - a))
                block = np.asarray(raw, dtype=np.float32)
                finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1) if raw.dtype.kind in "fc" else None
                if finite is not None and not finite.all():
                    plane = lo + int(np.argmin(finite))
                    raise UserError(f"{self.where()}: input plane {plane} of {self.name} holds NaN or infinity "
                                    f"(the input, not the prediction, is not finite)")
                out.append(block)
        return np.concatenate(out) if out else np.zeros((0, *self.shape[1:]), np.float32)

    def where(self) -> str:
        """The input's file (or folder) for messages: its one file, the folder of its files, or its name.

        Returns:
            a path or name.
        """
        if self.provenance.get("source"):
            return str(self.provenance["source"])
        if len(self.files) == 1:
            return str(self.files[0])
        parents = {str(Path(f).parent) for f in self.files}
        return parents.pop() if len(parents) == 1 else self.name


FINGERPRINT_BUDGET = 64 * 2 ** 20     # bytes read from an input's files in all to fingerprint them
FINGERPRINT_BLOCK = (4096, 2 ** 20)   # bytes read per sample of one file: at least, at most
FINGERPRINT_METHOD = "content-v1"     # recorded: fingerprints of earlier versions (by modification time) differ


def _file_digest(path: Path, size: int, block: int, digest: Any) -> None:
    """Add ``path``'s content to ``digest``: all of it when at most 4 blocks, else 4 blocks (start, a third,
    two thirds, end)."""
    try:
        with open(path, "rb") as f:
            if size <= 4 * block:
                digest.update(f.read())
                return
            for offset in (0, size // 3, 2 * size // 3, size - block):
                f.seek(offset)
                digest.update(f.read(block))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def fingerprint(src: VolumeSource) -> dict:
    """What identifies the input of a prediction, recorded in the probability store.

    It follows the content, not the clock: a file copied, restored or repaired to the same bytes keeps its
    fingerprint (a new modification time does not make it "another input"). To stay cheap for inputs of many
    GB, a file is hashed whole only when small; a larger one by four samples (start, a third, two thirds,
    end) whose size shares :data:`FINGERPRINT_BUDGET` among the files, with its exact size.

    Args:
        src: the input volume.

    Returns:
        ``{"files": count, "bytes": total size, "sha256": hash, "method": FINGERPRINT_METHOD}``: the hash
        covers the shape and every file's name, size and content (whole or sampled), or, for a source without
        files, the content of its first, middle and last planes.
    """
    digest = hashlib.sha256(json.dumps([list(src.shape), list(src.slice_ids[:1])]).encode())
    total = 0
    block = max(FINGERPRINT_BLOCK[0], min(FINGERPRINT_BLOCK[1], FINGERPRINT_BUDGET // (4 * max(len(src.files), 1))))
    for f in src.files:
        try:
            size = Path(f).stat().st_size
        except OSError as e:
            raise UserError(f"{f}: cannot read ({e.strerror})") from None
        total += size
        digest.update(f"{Path(f).name}\0{size}\n".encode())
        _file_digest(Path(f), size, block, digest)
    if not src.files and src.shape[0]:
        for z in sorted({0, src.shape[0] // 2, src.shape[0] - 1}):
            digest.update(np.ascontiguousarray(src.read(z, z + 1)).tobytes())
    return {"files": len(src.files), "bytes": total, "sha256": digest.hexdigest(), "method": FINGERPRINT_METHOD}


__all__ = ["KNOWN_NAME", "GIVEN", "METADATA", "FOLDER_NAME", "CATALOGUE", "ASSUMED", "SPACING_SOURCES",
           "FINGERPRINT_BUDGET", "FINGERPRINT_METHOD", "VolumeSource", "fingerprint"]
