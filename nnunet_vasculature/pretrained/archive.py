"""The files of a downloaded model: a zip read in place (nothing is extracted) or an unpacked folder.

A zip from the internet is untrusted input. Before anything is decompressed:

- every member name is checked against path traversal (absolute names, ``..``, drive letters);
- a member is read only if its declared size and compression ratio are plausible for a model file
  (:data:`MAX_RATIO`, :data:`MAX_MEMBER_BYTES`), so that a zip bomb (a few MB inflating to GBs) is refused
  from its central directory in microseconds. Python's ``zipfile`` never returns more than the declared
  size of a member (a member that inflates to more fails its CRC check), so the declared size bounds the
  memory a read takes.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath

from nnunet_vasculature.errors import UserError

# deflate compresses trained float32 weights ~1.1:1, JSON and pickled plans up to ~10:1; a member whose
# declared size exceeds its stored size this many times (and is larger than RATIO_FLOOR_BYTES) is a bomb
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20
MAX_MEMBER_BYTES = 16 << 30          # larger than any nnU-Net checkpoint (ResEnc-L with optimiser: ~1.6 GB)
MAX_SMALL_FILE_BYTES = 64 << 20      # plans, dataset.json, pickled v1 metadata


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n} B"


class ModelFiles:
    """Member names (POSIX, relative) and bounded reads of a model zip or folder.

    For a folder whose own name is a model identifier (``TRAINER__PLANS__CONFIG``) the names start with
    that folder's name, so that one pattern finds models in zips, dataset folders and model folders.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zip: zipfile.ZipFile | None = None
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
            pp = PurePosixPath(n.replace("\\", "/"))
            if pp.is_absolute() or ".." in pp.parts or re.match(r"^[A-Za-z]:", n):
                raise UserError(f"{self.path}: unsafe member path '{n}' (path traversal)")

    def check_member(self, name: str, limit: int = MAX_MEMBER_BYTES) -> int:
        """Refuse a zip member whose declared size or compression ratio is implausible (before any
        decompression).

        Args:
            name: member name.
            limit: largest declared size accepted for this member.

        Returns:
            The declared (uncompressed) size in bytes.
        """
        if self.zip is None:
            size = (self.path / name[len(self.prefix):]).stat().st_size
            if size > limit:
                raise UserError(f"{self.path}: {name} is {_human(size)}, more than the {_human(limit)} such a "
                                f"file can be")
            return size
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise UserError(f"{self.path}: no member {name}") from None
        size, stored = info.file_size, info.compress_size
        if size > limit:
            raise UserError(f"{self.path}: {name} declares {_human(size)}, more than the {_human(limit)} such a "
                            f"file can be: refused without extracting (zip bomb?)")
        if size > RATIO_FLOOR_BYTES and size > MAX_RATIO * max(stored, 1):
            raise UserError(f"{self.path}: {name} declares {_human(size)} from {_human(stored)} compressed "
                            f"(ratio {size / max(stored, 1):.0f}:1; model files compress about 1-10:1): "
                            f"refused without extracting (zip bomb?)")
        return size

    def read(self, name: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
        """The bytes of member ``name``, after :meth:`check_member`.

        Args:
            name: member name (as in :attr:`names`).
            limit: largest declared size accepted.

        Returns:
            The member's content.
        """
        self.check_member(name, limit)
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.path / name[len(self.prefix):]).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise UserError(f"{self.path}: cannot read {name} ({e})") from None
        except MemoryError:
            raise UserError(f"{self.path}: {name} does not fit in memory") from None

    def where(self, name: str) -> str:
        """``zip:member`` or the file's path, for messages."""
        return f"{self.path}:{name}" if self.zip is not None else str(self.path / name[len(self.prefix):])


__all__ = ["MAX_RATIO", "MAX_MEMBER_BYTES", "MAX_SMALL_FILE_BYTES", "ModelFiles"]
