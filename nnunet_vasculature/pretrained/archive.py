"""The files of a downloaded or exported model: a zip read in place (nothing is extracted) or an unpacked
folder; and the one set of archive checks that ``import-pretrained`` (v1 and v2 zips) and the installer of
exported models (:func:`nnunet_vasculature.export.model_zip.install_model_zip`, which the Kaggle script runs)
share.

A zip from the internet is untrusted input. Before anything is decompressed, from its central directory:

- every member name is checked against path traversal (absolute names, ``..``, drive letters);
- a member is read only if its compression ratio (:data:`MAX_RATIO`) and its declared size are plausible
  for a model file: at most :data:`MAX_MEMBER_BYTES` (a v2 checkpoint or any member of an exported model),
  :data:`MAX_V1_CHECKPOINT_BYTES` (a v1 ``.model``) or :data:`MAX_SMALL_FILE_BYTES` (plans, dataset.json,
  pickled metadata);
- all the members read (or installed) from one archive together declare at most :data:`MAX_TOTAL_BYTES`.

So a zip bomb (a few MB inflating to GBs) is refused in microseconds. Python's ``zipfile`` never returns
more than the declared size of a member (a member that inflates to more fails its CRC check), so the
declared sizes bound the memory and disk a read takes. The caps have a margin of 2-4x over the largest real
files; :class:`ArchiveLimits` carries them (tests lower them), and the error names the cap that refused.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from nnunet_vasculature.errors import UserError

# deflate compresses trained float32 weights ~1.1:1, JSON and pickled plans up to ~10:1; a member whose
# declared size exceeds its stored size this many times (and is larger than RATIO_FLOOR_BYTES) is a bomb
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20
# one member: the largest nnU-Net v2 checkpoints (ResEnc-L/XL with the optimiser's momentum) are ~1-2 GB
MAX_MEMBER_BYTES = 4 << 30
# a v1 model_final_checkpoint.model: Generic_UNet (3D ~31 M parameters, 2D ~41 M) with its SGD momentum,
# ~250-330 MB (Task008_HepaticVessel's 2020 download)
MAX_V1_CHECKPOINT_BYTES = 1 << 30
# everything read from one archive (five folds of import-pretrained) or installed from one exported model zip
MAX_TOTAL_BYTES = 8 << 30
MAX_SMALL_FILE_BYTES = 64 << 20      # plans, dataset.json, pickled v1 metadata


@dataclass(frozen=True)
class ArchiveLimits:
    """The caps an archive is checked against (the module's constants unless a caller lowers them)."""
    member_bytes: int = MAX_MEMBER_BYTES
    total_bytes: int = MAX_TOTAL_BYTES
    ratio: int = MAX_RATIO


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


def _cap_name(limit: int, limits: ArchiveLimits) -> str:
    """Which cap ``limit`` is, for messages."""
    names = {limits.member_bytes: "MAX_MEMBER_BYTES", MAX_V1_CHECKPOINT_BYTES: "MAX_V1_CHECKPOINT_BYTES",
             MAX_SMALL_FILE_BYTES: "MAX_SMALL_FILE_BYTES"}
    return names.get(limit, "cap")


def check_declared(where: str, name: str, size: int, stored: int | None, limit: int,
                   limits: ArchiveLimits = ArchiveLimits()) -> int:
    """Refuse one member by its declared size: compression ratio first, then the per-member cap.

    Args:
        where: the archive (or folder), for messages.
        name: the member.
        size: its declared (uncompressed) size in bytes.
        stored: its compressed size (None: a file of a folder, no ratio).
        limit: the cap on this kind of member (:data:`MAX_MEMBER_BYTES`, :data:`MAX_V1_CHECKPOINT_BYTES`,
            :data:`MAX_SMALL_FILE_BYTES`); ``limits.member_bytes`` applies too.
        limits: the caps.

    Returns:
        ``size``; a one-line UserError naming the member and the cap that refused it.
    """
    limit = min(limit, limits.member_bytes)
    if stored is not None and size > RATIO_FLOOR_BYTES and size > limits.ratio * max(stored, 1):
        raise UserError(f"{where}: {name} declares {_human(size)} from {_human(stored)} compressed "
                        f"(ratio {size / max(stored, 1):.0f}:1; model files compress about 1-10:1): "
                        f"refused without extracting (zip bomb?)")
    if size > limit:
        verb = "declares" if stored is not None else "is"
        raise UserError(f"{where}: {name} {verb} {_human(size)}, over the {_human(limit)} that such a model file can "
                        f"be ({_cap_name(limit, limits)} in {__name__}): refused without extracting (zip bomb?)")
    return size


def check_total(where: str, total: int, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Refuse an archive whose members to read or install declare more than ``limits.total_bytes`` together.

    Args:
        where: the archive, for messages.
        total: the sum of the declared sizes.
        limits: the caps.
    """
    if total > limits.total_bytes:
        raise UserError(f"{where}: the members to read declare {_human(total)} together, over the "
                        f"{_human(limits.total_bytes)} a model needs (MAX_TOTAL_BYTES in {__name__}): refused "
                        f"without extracting (zip bomb?)")


def unsafe_member_name(name: str) -> bool:
    """Whether a zip member name would leave the folder it is extracted to (absolute, ``..``, drive letter).

    Args:
        name: the member's name as stored.

    Returns:
        True for an unsafe name.
    """
    pp = PurePosixPath(name.replace("\\", "/"))
    return pp.is_absolute() or ".." in pp.parts or bool(re.match(r"^[A-Za-z]:", name))


def check_zip_members(infos: Iterable[zipfile.ZipInfo], where: str, limits: ArchiveLimits = ArchiveLimits()) -> int:
    """The checks of every member an installer extracts: ratio and per-member cap each, then their total.

    Args:
        infos: the members to extract.
        where: the archive, for messages.
        limits: the caps.

    Returns:
        The total declared size.
    """
    total = sum(check_declared(where, i.filename, i.file_size, i.compress_size, limits.member_bytes, limits)
                for i in infos if not i.is_dir())
    check_total(where, total, limits)
    return total


class ModelFiles:
    """Member names (POSIX, relative) and bounded reads of a model zip or folder.

    For a folder whose own name is a model identifier (``TRAINER__PLANS__CONFIG``) the names start with
    that folder's name, so that one pattern finds models in zips, dataset folders and model folders.
    Every read counts towards ``limits.total_bytes``.
    """

    def __init__(self, path: Path, limits: ArchiveLimits = ArchiveLimits()):
        self.path = Path(path)
        self.limits = limits
        self.zip: zipfile.ZipFile | None = None
        self.bytes_read = 0
        if not self.path.exists():
            raise UserError(f"{self.path}: not found")
        if self.path.is_dir():
            root = self.path.resolve()
            self.prefix = f"{root.name}/" if "__" in root.name else ""
            self.names = [self.prefix + p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
            return
        self.prefix = ""
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{self.path}: not a valid zip file ({e})") from None
        self.names = self.zip.namelist()
        for n in self.names:
            if unsafe_member_name(n):
                raise UserError(f"{self.path}: unsafe member path '{n}' (path traversal)")

    def check_member(self, name: str, limit: int = MAX_MEMBER_BYTES) -> int:
        """Refuse a member whose declared size or compression ratio is implausible (before any decompression).

        Args:
            name: member name.
            limit: the cap on this kind of member (:data:`MAX_MEMBER_BYTES`, :data:`MAX_V1_CHECKPOINT_BYTES`,
                :data:`MAX_SMALL_FILE_BYTES`).

        Returns:
            The declared (uncompressed) size in bytes.
        """
        if self.zip is None:
            size = (self.path / name[len(self.prefix):]).stat().st_size
            return check_declared(str(self.path), name, size, None, limit, self.limits)
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise UserError(f"{self.path}: no member {name}") from None
        return check_declared(str(self.path), name, info.file_size, info.compress_size, limit, self.limits)

    def check_members(self, members: Iterable[tuple[str, int]]) -> int:
        """:meth:`check_member` of each member to be read, then their total against ``limits.total_bytes``
        (with what was read already), all before any of them is read.

        Args:
            members: (member name, its cap) pairs.

        Returns:
            The total declared size of ``members``.
        """
        total = sum(self.check_member(name, limit) for name, limit in members)
        check_total(str(self.path), self.bytes_read + total, self.limits)
        return total

    def read(self, name: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
        """The bytes of member ``name``, after :meth:`check_member` and the total cap.

        Args:
            name: member name (as in :attr:`names`).
            limit: the cap on this kind of member.

        Returns:
            The member's content.
        """
        size = self.check_member(name, limit)
        check_total(str(self.path), self.bytes_read + size, self.limits)
        try:
            if self.zip is not None:
                data = self.zip.read(name)
            else:
                data = (self.path / name[len(self.prefix):]).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise UserError(f"{self.path}: cannot read {name} ({e})") from None
        except MemoryError:
            raise UserError(f"{self.path}: {name} does not fit in memory") from None
        self.bytes_read += len(data)
        return data

    def where(self, name: str) -> str:
        """``zip:member`` or the file's path, for messages."""
        return f"{self.path}:{name}" if self.zip is not None else str(self.path / name[len(self.prefix):])


__all__ = ["MAX_RATIO", "MAX_MEMBER_BYTES", "MAX_V1_CHECKPOINT_BYTES", "MAX_TOTAL_BYTES", "MAX_SMALL_FILE_BYTES",
           "ArchiveLimits", "ModelFiles", "check_declared", "check_total", "check_zip_members", "unsafe_member_name"]
