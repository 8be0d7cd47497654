"""The HuBMAP vasculature submission mask encoding (DOMAIN §8).

A mask is written as pycocotools' compressed RLE counts of the Fortran-ordered ``uint8`` H×W×1 mask
(``pycocotools.mask.encode``), compressed with zlib at best compression (level 9) and base64-encoded
to ASCII. ``decode_mask`` reverses it given the tile's height and width (the counts do not carry them).
"""
from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from nnunet_vasculature.errors import UserError


def encode_masks(masks: np.ndarray) -> list[str]:
    """Encode a stack of binary masks ``(N, H, W)`` (any dtype, nonzero = inside) -> ``N`` ASCII strings."""
    from pycocotools import mask as coco_mask
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    stacked = np.asfortranarray(np.moveaxis(masks != 0, 0, -1).astype(np.uint8))      # H x W x N, Fortran
    rles = coco_mask.encode(stacked)
    return [base64.b64encode(zlib.compress(r["counts"], zlib.Z_BEST_COMPRESSION)).decode("ascii") for r in rles]


def encode_mask(mask: np.ndarray) -> str:
    """Encode one binary ``(H, W)`` mask (nonzero = inside)."""
    return encode_masks(np.asarray(mask)[None])[0]


def read_rle(text: str, height: int, width: int, where: str = "mask") -> dict:
    """One encoded mask as pycocotools' RLE (``{"size": [H, W], "counts": bytes}``), checked and not decoded: a
    UserError naming ``where`` if it is not valid base64 / zlib / RLE of that size.

    Args:
        text: base64 of the zlib-compressed COCO counts (the competition's format).
        height: tile height.
        width: tile width.
        where: the file and instance, for messages.

    Returns:
        the RLE.
    """
    from pycocotools import mask as coco_mask
    try:
        counts = zlib.decompress(base64.b64decode(text, validate=True))
    except (binascii.Error, zlib.error, ValueError) as e:
        raise UserError(f"{where}: not base64 of zlib-compressed COCO RLE counts ({e})") from None
    if not counts or any(c < 48 or c > 111 for c in counts):        # COCO's compressed counts use chars 48..111
        raise UserError(f"{where}: decoded counts are not COCO compressed RLE")
    rle = {"size": [int(height), int(width)], "counts": counts}
    try:
        areas = coco_mask.area(rle)
    except Exception as e:   # noqa: BLE001 - pycocotools raises plain exceptions on malformed counts
        raise UserError(f"{where}: malformed COCO RLE ({e})") from None
    if int(areas) > int(height) * int(width):
        raise UserError(f"{where}: RLE covers more than the {height}x{width} tile")
    total = _rle_length(counts)
    if total != int(height) * int(width):
        raise UserError(f"{where}: RLE runs add up to {total} pixels, not {height}x{width}={height * width}")
    return rle


def decode_mask(text: str, height: int, width: int, where: str = "mask") -> np.ndarray:
    """Decode one encoded mask into a ``bool`` ``(height, width)`` array; a UserError naming ``where`` if
    it is not valid base64 / zlib / RLE of that size (:func:`read_rle`)."""
    from pycocotools import mask as coco_mask
    return coco_mask.decode(read_rle(text, height, width, where)).astype(bool)


def _rle_length(counts: bytes) -> int:
    """Sum of the run lengths in COCO's compressed counts string (its LEB128-like, delta-coded form)."""
    total, runs, p = 0, [], 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
        total += x
    return total


__all__ = ["encode_masks", "encode_mask", "read_rle", "decode_mask"]
