"""One entry point for every multiscale input: :func:`open_volume` recognises an HOA dataset name
(``hoa:NAME``), an OME-Zarr image, an N5 multiscale folder or a folder of JPEG 2000 slices, picks the
level to read (``"auto"``: the one whose spacing is nearest the model's) and returns it as a
:class:`~nnunet_vasculature.io.pyramid.PyramidVolume` read a chunk row at a time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.hoa import PREFIX
from nnunet_vasculature.io.pyramid import Pyramid, PyramidVolume, choose_level, to_volume


def is_volume_spec(spec: str | Path) -> bool:
    """Whether ``spec`` is an input :func:`open_volume` reads (not a Kaggle or nnU-Net folder).

    Args:
        spec: ``hoa:NAME`` or a path.

    Returns:
        True for ``hoa:`` names, OME-Zarr groups, N5 folders and JPEG 2000 slice folders.
    """
    from nnunet_vasculature.io.jp2 import is_jp2_folder
    from nnunet_vasculature.io.n5 import is_n5
    from nnunet_vasculature.io.omezarr import is_omezarr
    if isinstance(spec, str) and spec.startswith(PREFIX):
        return True
    path = Path(spec)
    return path.is_dir() and (is_omezarr(path) or is_n5(path) or is_jp2_folder(path))


def open_pyramid(spec: str | Path, remote: bool = False, spacing_um: float | None = None) -> Pyramid:
    """Every level of the input ``spec`` (metadata only; nothing read yet).

    Args:
        spec: ``hoa:NAME``, an ``*.ome.zarr`` group, an N5 multiscale folder or a folder of ``*.jp2`` slices.
        remote: allow an HOA dataset to be read over the network.
        spacing_um: voxel size of a JPEG 2000 folder whose name does not say it.

    Returns:
        the pyramid.
    """
    from nnunet_vasculature.io.jp2 import is_jp2_folder, read_jp2_folder
    from nnunet_vasculature.io.n5 import is_n5, read_n5
    from nnunet_vasculature.io.omezarr import is_omezarr, read_omezarr
    if isinstance(spec, str) and spec.startswith(PREFIX):
        from nnunet_vasculature.io.hoa import read_hoa
        name = spec.removeprefix(PREFIX).strip()
        if not name:
            raise UserError(f"{spec}: give a dataset name after 'hoa:'")
        return read_hoa(name, remote)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (expected an OME-Zarr image, an N5 folder or JPEG 2000 slices)")
    if is_omezarr(path):
        return read_omezarr(path)
    if is_n5(path):
        return read_n5(path)
    if is_jp2_folder(path):
        return read_jp2_folder(path, spacing_um)
    raise UserError(f"{path}: not an OME-Zarr image, N5 multiscale folder or folder of JPEG 2000 slices")


def open_volume(spec: str | Path, level: int | str = "auto", target_spacing_um: float | Sequence[float] | None = None,
                *, remote: bool = False, spacing_um: float | None = None, keep_rows: int = 2,
                log: Callable[[str], None] | None = print) -> PyramidVolume:
    """The input ``spec`` at one level, ready for the streaming predictor.

    Args:
        spec: ``hoa:NAME``, an ``*.ome.zarr`` group (NGFF 0.4 or 0.5), an N5 multiscale folder (HOA layout)
            or a folder of ``*.jp2`` slices.
        level: ``"auto"`` (nearest ``target_spacing_um``; level 0 without one) or a level number.
        target_spacing_um: the model's voxel size in µm (one number or (z, y, x)).
        remote: allow an HOA dataset to be read over the network.
        spacing_um: voxel size of a JPEG 2000 folder whose name does not say it.
        keep_rows: chunk rows kept in memory by the reader (each ``chunk_depth`` planes).
        log: where the line saying which level was chosen goes (None: nowhere; it is also ``.choice``).

    Returns:
        the volume (``read(z0, z1)`` -> float32 planes; ``level``, ``translation``, ``chunk_depth``,
        ``provenance`` and ``choice`` for the output).
    """
    pyramid = open_pyramid(spec, remote, spacing_um)
    index, message = choose_level(pyramid, level, target_spacing_um)
    if log is not None:
        log(message)
    return to_volume(pyramid, index, message, keep_rows)


__all__ = ["is_volume_spec", "open_pyramid", "open_volume"]
