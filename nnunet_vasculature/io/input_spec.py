"""The top of the input stack: the ``-i`` value of ``predict`` parsed once into an :class:`InputSpec` (what
kind of input it is, where, at which level, read how), and opened into
:class:`~nnunet_vasculature.io.volume_source.VolumeSource` s by :func:`open_input`.

The stack, bottom to top (no module imports one above it):

1. :mod:`.volume_source`: the contract (``VolumeSource``, ``fingerprint``);
2. the readers: :mod:`.sennet_inputs` (Kaggle kidney folders, nnU-Net raw images, converted z-chunks, with
   their Kaggle slice ids) and the multiscale model :mod:`.pyramid` with its formats :mod:`.omezarr`,
   :mod:`.n5`, :mod:`.jp2`, :mod:`.hoa`;
3. this module: which reader an input is for, decided here only.

Kinds (:data:`KINDS`): a Kaggle kidney folder (``images/`` or numbered TIFF slices), a Kaggle ``test/``
folder of kidney folders, one nnU-Net raw image, an nnU-Net images folder (imagesTs/imagesTr, converted
z-chunks read per kidney), and the multiscale ones: ``hoa:NAME`` (a Human Organ Atlas dataset), an OME-Zarr
image, an N5 multiscale folder, a folder of JPEG 2000 slices.

``--spacing`` (:func:`parse_spacing`): ``UM`` (every volume whose input does not say its voxel size; a Kaggle
kidney's known size too) and/or ``KIDNEY=UM`` pairs (that volume only, so one Kaggle test folder can hold
kidneys of different voxel sizes), each within :data:`SPACING_RANGE_UM`; a pair naming no volume of the input
is refused.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.hoa import PREFIX as HOA_PREFIX
from nnunet_vasculature.io.hoa import read_hoa
from nnunet_vasculature.io.jp2 import is_jp2_folder, read_jp2_folder
from nnunet_vasculature.io.n5 import is_n5, read_n5
from nnunet_vasculature.io.omezarr import is_omezarr, read_omezarr
from nnunet_vasculature.io.pyramid import Pyramid, choose_level, chunks_line, to_volume
from nnunet_vasculature.io.sennet import numbered_slice_ids
from nnunet_vasculature.io.sennet_inputs import (
    RAW_IMAGE_SUFFIXES,
    chunked_kidneys,
    kaggle_kidney,
    kaggle_kidney_name,
    raw_image,
    raw_image_name,
)
from nnunet_vasculature.io.volume_source import VolumeSource

KAGGLE_KIDNEY = "kaggle_kidney"        # a Kaggle kidney folder: images/ or numbered TIFF slices
KAGGLE_TEST = "kaggle_test"            # a Kaggle test/ folder of kidney folders
NNUNET_IMAGE = "nnunet_image"          # one nnU-Net raw image (TIFF + JSON, NIfTI, MHA)
NNUNET_IMAGES = "nnunet_images"        # an nnU-Net images folder (converted z-chunks read per kidney)
HOA, OMEZARR, N5, JP2 = "hoa", "omezarr", "n5", "jp2"
MULTISCALE_KINDS = (HOA, OMEZARR, N5, JP2)
KINDS = (KAGGLE_KIDNEY, KAGGLE_TEST, NNUNET_IMAGE, NNUNET_IMAGES, *MULTISCALE_KINDS)
AUTO = "auto"
SPACING_RANGE_UM = (0.1, 10000.0)     # --spacing: from sub-micrometre synchrotron scans to 1 cm voxels


@dataclass(frozen=True)
class InputSpec:
    """One ``-i`` value, parsed: ``kind`` (one of :data:`KINDS`), ``text`` (the value as given), ``path`` (None
    for ``hoa:NAME``), ``name`` (the HOA dataset's name, else None), ``level`` (``"auto"`` or a level
    number, multiscale kinds only), ``remote`` (``hoa:`` only), ``spacing`` (µm, when the input does not
    say) and ``kidney_spacing`` (``(KIDNEY, µm)`` pairs of ``--spacing KIDNEY=UM``). ``str(spec)`` is ``text``."""
    kind: str
    text: str
    path: Path | None = None
    name: str | None = None
    level: int | str = AUTO
    remote: bool = False
    spacing: float | None = None
    kidney_spacing: tuple[tuple[str, float], ...] = ()

    def spacing_for(self, name: str | None) -> float | None:
        """The ``--spacing`` of the volume ``name``: its ``KIDNEY=UM`` pair, else the plain ``UM``, else None.

        Args:
            name: the volume's name.

        Returns:
            µm or None.
        """
        return dict(self.kidney_spacing).get(name, self.spacing)

    @property
    def multiscale(self) -> bool:
        """Whether the input is a pyramid (a level is chosen; written to ``<name>.ome.zarr`` without ``-o``)."""
        return self.kind in MULTISCALE_KINDS

    def __str__(self) -> str:
        return self.text

    def absolute(self) -> InputSpec:
        """The same input with an absolute path (for processes started elsewhere).

        Returns:
            the spec (itself for ``hoa:NAME``).
        """
        if self.path is None:
            return self
        path = self.path.resolve()
        return dataclasses.replace(self, path=path, text=str(path))

    def to_json(self) -> dict:
        """The spec as JSON-able values.

        Returns:
            a dict :meth:`from_json` reads back.
        """
        return {**dataclasses.asdict(self), "path": None if self.path is None else str(self.path)}

    @classmethod
    def from_json(cls, values: dict) -> InputSpec:
        """The spec of :meth:`to_json` (no file is looked at again).

        Args:
            values: the dict.

        Returns:
            the spec.
        """
        path = values.get("path")
        pairs = tuple((str(k), float(v)) for k, v in values.get("kidney_spacing") or ())
        return cls(**{**values, "path": None if path is None else Path(path), "kidney_spacing": pairs})


def parse_spacing(value: float | str | Sequence[str] | None) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """``--spacing``: one voxel size for every volume and/or ``KIDNEY=UM`` pairs, each within
    :data:`SPACING_RANGE_UM`.

    Args:
        value: None, a number, or the flag's words (``["63.08"]``, ``["kidney_5=50.28", "kidney_6=63.08"]``).

    Returns:
        (the plain value or None, the pairs).
    """
    if value is None:
        return None, ()
    words = [value] if isinstance(value, (int, float, str)) else list(value)
    plain, pairs = None, {}
    for word in words:
        name, _, number = str(word).rpartition("=") if isinstance(word, str) else ("", "", word)
        try:
            um = float(number)
        except (TypeError, ValueError):
            raise UserError(f"--spacing {word}: expected UM or KIDNEY=UM (µm), e.g. 63.08 or kidney_6=63.08") from None
        low, high = SPACING_RANGE_UM
        if not (math.isfinite(um) and low <= um <= high):
            raise UserError(f"--spacing {word}: the voxel size must be between {low:g} and {high:g} µm")
        if name:
            if name in pairs:
                raise UserError(f"--spacing {word}: {name} is given twice")
            pairs[name] = um
        elif plain is not None:
            raise UserError(f"--spacing {word}: give one plain voxel size (others as KIDNEY=UM)")
        else:
            plain = um
    return plain, tuple(pairs.items())


def parse_input(value: str | Path | InputSpec, level: int | str | None = AUTO, remote: bool = False,
                spacing: float | str | Sequence[str] | None = None) -> InputSpec:
    """What ``value`` is, from its text and the folder's contents (metadata files only; no voxel is read).

    Args:
        value: the ``-i`` value: ``hoa:NAME`` or a path (an InputSpec is returned as it is).
        level: ``--level``: ``"auto"`` (or None) or a level number; only for multiscale inputs.
        remote: ``--remote``: allow an ``hoa:`` dataset to be read over the network.
        spacing: ``--spacing``: voxel size (µm) when the input does not say, or its words (``KIDNEY=UM`` pairs
            too; :func:`parse_spacing`).

    Returns:
        the spec.
    """
    if isinstance(value, InputSpec):
        return value
    spacing, pairs = parse_spacing(spacing)
    text = str(value)
    level = AUTO if level is None or str(level).strip().lower() == AUTO else level
    if remote and not text.startswith(HOA_PREFIX):
        raise UserError(f"--remote: only hoa:NAME inputs are read over the network, not {text}")
    if text.startswith(HOA_PREFIX):
        name = text.removeprefix(HOA_PREFIX).strip()
        if not name:
            raise UserError(f"{text}: give a dataset name after '{HOA_PREFIX}'")
        return InputSpec(HOA, text, None, name, level, remote, spacing, pairs)
    path = Path(value)
    kind = _multiscale_kind(path)
    if kind is None and level != AUTO:
        raise UserError(f"--level {level}: {text} is not a multiscale input (OME-Zarr, N5, hoa:NAME, JPEG 2000)")
    if kind is None:
        kind = _single_kind(path)
    return InputSpec(kind, text, path, None, level, remote, spacing, pairs)


def _multiscale_kind(path: Path) -> str | None:
    if not path.is_dir():
        return None
    if is_omezarr(path):
        return OMEZARR
    if is_n5(path):
        return N5
    if is_jp2_folder(path):
        return JP2
    return None


def _single_kind(path: Path) -> str:
    if not path.exists():
        raise UserError(f"{path}: not found")
    if path.is_file():
        return NNUNET_IMAGE
    entries = list(path.iterdir())
    if (path / "images").is_dir() or any(re.match(r"^\d+\.tiff?$", p.name) for p in entries):
        return KAGGLE_KIDNEY
    if any(p.name.endswith(RAW_IMAGE_SUFFIXES) for p in entries):
        return NNUNET_IMAGES
    if any((d / "images").is_dir() for d in entries):
        return KAGGLE_TEST
    raise UserError(f"{path}: no kidney slices, nnU-Net images or kidney folders inside")


def open_pyramid(spec: InputSpec) -> Pyramid:
    """Every level of a multiscale input (metadata only; nothing read yet).

    Args:
        spec: a multiscale input.

    Returns:
        the pyramid.
    """
    if spec.kind == HOA:
        return read_hoa(spec.name, spec.remote)
    if spec.kind == OMEZARR:
        return read_omezarr(spec.path, spacing_um=spec.spacing_for(spec.path.name.split(".")[0]))
    if spec.kind == N5:
        return read_n5(spec.path)
    if spec.kind == JP2:
        return read_jp2_folder(spec.path, spec.spacing_for(spec.path.name))
    if spec.kind == NNUNET_IMAGE:
        raise UserError(f"{spec}: not a folder (expected an OME-Zarr image, an N5 folder or JPEG 2000 slices)")
    raise UserError(f"{spec}: not an OME-Zarr image, N5 multiscale folder or folder of JPEG 2000 slices")


def open_input(spec: InputSpec, target_spacing_um: float | Sequence[float] | None = None,
               log: Callable[[str], None] | None = print, keep_rows: int = 2) -> list[VolumeSource]:
    """Every volume of ``spec``, each plane with its Kaggle slice id.

    Args:
        spec: the parsed input.
        target_spacing_um: the model's voxel size (z, y, x) in µm, for a multiscale input's ``level="auto"``.
        log: where a multiscale input's line saying which level was chosen goes (None: nowhere; it is also
            the volume's ``choice``).
        keep_rows: chunk rows a multiscale reader keeps in memory.

    Returns:
        the volumes (a multiscale input: one, with its ``level``, ``translation``, ``chunk_depth``,
        ``provenance`` and ``choice``).
    """
    if spec.multiscale:
        volumes = [open_volume(spec, target_spacing_um=target_spacing_um, keep_rows=keep_rows, log=log)]
    elif spec.kind == NNUNET_IMAGE:
        volumes = [raw_image(spec.path, spec.spacing_for(raw_image_name(spec.path)))]
    elif spec.kind == KAGGLE_KIDNEY:
        volumes = [kaggle_kidney(spec.path, spec.spacing_for(kaggle_kidney_name(spec.path)))]
    elif spec.kind == NNUNET_IMAGES:
        volumes = chunked_kidneys(spec.path)
    elif spec.kind == KAGGLE_TEST:
        volumes = [kaggle_kidney(d, spec.spacing_for(d.name)) for d in sorted(spec.path.iterdir())
                   if (d / "images").is_dir()]
    else:
        raise ValueError(f"{spec}: unknown input kind {spec.kind!r}")
    names = [v.name for v in volumes]
    unused = [k for k, _ in spec.kidney_spacing if k not in names]
    if unused:
        raise UserError(f"--spacing {unused[0]}=...: {spec} holds no volume '{unused[0]}' (it holds "
                        f"{', '.join(names) or 'none'})")
    return volumes


def open_inputs(path: Path | str | InputSpec, spacing: float | None = None, level: int | str | None = AUTO,
                target_spacing_um: float | Sequence[float] | None = None, remote: bool = False,
                log: Callable[[str], None] | None = print) -> list[VolumeSource]:
    """Every volume to predict in ``path``: :func:`open_input` of :func:`parse_input`.

    Args:
        path: the ``-i`` value (any kind of :data:`KINDS`), or its InputSpec.
        spacing: voxel size (µm) when the input does not say.
        level: the pyramid level of a multiscale input (``"auto"``: nearest ``target_spacing_um``).
        target_spacing_um: the model's voxel size (z, y, x) in µm, for ``level="auto"``.
        remote: allow an ``hoa:`` dataset to be read over the network.
        log: where a multiscale input's line saying which level was chosen goes (None: nowhere).

    Returns:
        The volumes.
    """
    return open_input(parse_input(path, level, remote, spacing), target_spacing_um, log)


def open_volume(spec: str | Path | InputSpec, level: int | str = AUTO,
                target_spacing_um: float | Sequence[float] | None = None, *, remote: bool = False,
                spacing_um: float | None = None, keep_rows: int = 2,
                log: Callable[[str], None] | None = print) -> VolumeSource:
    """One multiscale input at one level, ready for the streaming predictor.

    Args:
        spec: ``hoa:NAME``, an ``*.ome.zarr`` group (NGFF 0.4 or 0.5), an N5 multiscale folder (HOA layout)
            or a folder of ``*.jp2`` slices (or its InputSpec).
        level: ``"auto"`` (nearest ``target_spacing_um``; level 0 without one) or a level number.
        target_spacing_um: the model's voxel size in µm (one number or (z, y, x)).
        remote: allow an HOA dataset to be read over the network.
        spacing_um: voxel size of a JPEG 2000 folder whose name does not say it.
        keep_rows: chunk rows kept in memory by the reader (each ``chunk_depth`` planes).
        log: where the line saying which level was chosen goes (None: nowhere; it is also ``.choice``).

    Returns:
        the volume.
    """
    parsed = parse_input(spec, level, remote, spacing_um)
    pyramid = open_pyramid(parsed)          # a UserError saying what a single-resolution input is not
    index, message = choose_level(pyramid, parsed.level, target_spacing_um)
    if log is not None:
        log(message)
    volume = to_volume(pyramid, index, message, keep_rows)
    if log is not None and volume.absent_chunks:
        log(chunks_line(volume))
    return dataclasses.replace(volume, slice_ids=numbered_slice_ids(volume.name, volume.shape[0]))


__all__ = ["KAGGLE_KIDNEY", "KAGGLE_TEST", "NNUNET_IMAGE", "NNUNET_IMAGES", "HOA", "OMEZARR", "N5", "JP2",
           "MULTISCALE_KINDS", "KINDS", "SPACING_RANGE_UM", "InputSpec", "parse_spacing", "parse_input",
           "open_pyramid", "open_input", "open_inputs", "open_volume"]
