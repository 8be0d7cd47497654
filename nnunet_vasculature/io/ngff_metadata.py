"""The NGFF ``multiscales`` metadata of an OME-Zarr image (0.4 attributes or 0.5 ``ome``): the first multiscale
and a level's path inside the image, read alike by the input reader (:mod:`.omezarr`) and by probability images
other software wrote (:func:`nnunet_vasculature.io.volumes.open_foreign_image`)."""
from __future__ import annotations

from pathlib import PurePosixPath

from nnunet_vasculature.errors import UserError


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


def level_key(dataset: object, where: str) -> str:
    """The path of a level inside the image; one that leaves it (``..``, absolute) or is empty is a UserError.

    Args:
        dataset: one entry of the multiscale's ``datasets``.
        where: the image (for the message).

    Returns:
        the path.
    """
    key = dataset.get("path") if isinstance(dataset, dict) else None
    parts = PurePosixPath(key).parts if isinstance(key, str) else ()
    if not parts or key.startswith("/") or any(p in ("..", ".") for p in parts) or "\\" in key:
        raise UserError(f"{where}: dataset path {key!r} is not a level inside the image")
    return key


__all__ = ["multiscales_metadata", "level_key"]
