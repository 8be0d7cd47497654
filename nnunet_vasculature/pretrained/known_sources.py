"""Where the real source models come from, and the check of a downloaded file against its record.

The 2020 nnU-Net v1 pretrained models (Isensee et al., Nature Methods 2021, "Code availability":
"Pretrained models for all datasets in this study are available" at https://zenodo.org/record/3734294)
include ``Task008_HepaticVessel.zip`` (Medical Segmentation Decathlon task 8, CT, hepatic vessels and
tumours), file page https://zenodo.org/records/3734294/files/Task008_HepaticVessel.zip?download=1.
Later nnU-Net v1 releases point their downloader at other records (4003545, 4485926) with re-uploaded
zips: only a file from record 3734294 is the 2020 one.

The record's listed size and MD5 were not available where this package was written (no stored copy of
the record's file list): :data:`KNOWN_DOWNLOADS` leaves them ``None`` until someone copies them from the
record page. Until then :func:`known_download_checksum` computes and reports the file's MD5 and size
(so that a user can compare them with the record by eye) and says that they were not verified; once
filled in, a mismatch is a one-line error.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from nnunet_vasculature.errors import UserError


@dataclass(frozen=True)
class KnownDownload:
    """One file of a public record: where it is and what the record lists for it."""
    file_name: str
    record_url: str
    file_url: str
    size_bytes: int | None          # as the record lists it; None: not known here
    md5: str | None                 # as the record lists it (Zenodo lists MD5); None: not known here
    description: str


KNOWN_DOWNLOADS: dict[str, KnownDownload] = {
    "Task008_HepaticVessel.zip": KnownDownload(
        file_name="Task008_HepaticVessel.zip",
        record_url="https://zenodo.org/record/3734294",
        file_url="https://zenodo.org/records/3734294/files/Task008_HepaticVessel.zip?download=1",
        size_bytes=None,
        md5=None,
        description="nnU-Net v1 pretrained models of MSD Task008_HepaticVessel (2d, 3d_lowres, 3d_fullres, "
                    "3d_cascade_fullres; 5 folds each), made 2020-03-31"),
}


def _md5(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def known_download_checksum(path: Path) -> dict | None:
    """Check a downloaded source model against the record it is known from, by its file name.

    Args:
        path: the downloaded file (e.g. ``Task008_HepaticVessel.zip``).

    Returns:
        None when the file name is not a known download. Otherwise a dict: ``file`` (the name),
        ``record`` and ``file_url`` (where it comes from), ``md5`` and ``size_bytes`` (of this file),
        ``expected_md5`` and ``expected_size_bytes`` (the record's, or None where not known here), and
        ``verified``: True when the record's MD5 (and size, where known) match, None when the record's
        MD5 is not known here (nothing could be verified). A file whose size or MD5 differs from the
        record's is a one-line UserError (size first: cheap, before hashing gigabytes).
    """
    path = Path(path)
    known = KNOWN_DOWNLOADS.get(path.name)
    if known is None:
        return None
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if known.size_bytes is not None and size != known.size_bytes:
        raise UserError(f"{path}: {size} bytes, but {known.record_url} lists {known.size_bytes} for {known.file_name} "
                        f"(truncated or another file; download it again from {known.file_url})")
    try:
        md5 = _md5(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if known.md5 is not None and md5 != known.md5:
        raise UserError(f"{path}: MD5 {md5}, but {known.record_url} lists {known.md5} for {known.file_name} "
                        f"(corrupt or another file; download it again from {known.file_url})")
    return {"file": known.file_name, "record": known.record_url, "file_url": known.file_url, "md5": md5,
            "size_bytes": size, "expected_md5": known.md5, "expected_size_bytes": known.size_bytes,
            "verified": True if known.md5 is not None else None}


def describe_check(result: dict | None) -> str | None:
    """The line ``import-pretrained`` prints about :func:`known_download_checksum`'s result.

    Args:
        result: the function's result.

    Returns:
        The line, or None when the file is not a known download.
    """
    if result is None:
        return None
    if result["verified"]:
        return f"{result['file']}: MD5 {result['md5']} matches {result['record']}"
    return (f"{result['file']}: MD5 {result['md5']}, {result['size_bytes']} bytes; NOT verified: the listed checksum "
            f"of {result['record']} is not recorded in this package (compare with the record page)")


__all__ = ["KnownDownload", "KNOWN_DOWNLOADS", "known_download_checksum", "describe_check"]
