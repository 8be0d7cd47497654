"""User-facing errors and all-or-nothing output helpers."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import sys
import traceback
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

VERBOSE_ENV = "NNUNET_VASCULATURE_VERBOSE"    # "1": print the traceback under the one-line error


class UserError(Exception):
    """A problem with the user's input: reported as one line, no traceback, non-zero exit."""


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``final``.

    On failure the temporary folder is removed, so nothing half-written ever carries the
    final name. An existing ``final`` is refused unless ``overwrite``.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final}: already exists (pass --overwrite to replace it)")
    remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; renamed to ``final`` only on success.

    A ``final`` that is a folder is refused before anything is written; whatever fails (the caller's writing
    or the rename) removes the temporary file, so nothing is left behind.

    Args:
        final: the file to write.

    Returns:
        A context manager yielding the temporary path to write.

    Raises:
        UserError: ``final`` is an existing folder (named, not the temporary file).
    """
    final = Path(final)
    if final.is_dir():
        raise UserError(f"{final}: is a folder; give the output a file name")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Remove ``.NAME.tmp-PID`` siblings of ``final`` left by killed runs (PID no longer alive)."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    prefix = f".{final.name}.tmp-"
    for p in final.parent.iterdir():
        pid = p.name[len(prefix):]
        if p.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def describe_fault(e: BaseException) -> str | None:
    """One line for an operating-system or decoding fault that reached the command line; None for a bug.

    Args:
        e: the exception.

    Returns:
        The line (naming the file where the exception knows it), or None when ``e`` is not such a fault.
    """
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        what = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
        return f"{where}{what}"
    if isinstance(e, UnicodeDecodeError):
        return f"a text file is not UTF-8 ({e.reason} at byte {e.start})"
    if isinstance(e, (zipfile.BadZipFile, EOFError, zlib.error)):
        return f"a file is truncated or corrupt ({type(e).__name__}: {e})"
    return None


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, run, and turn UserError (and OS or decoding faults) into one line on stderr with a non-zero exit.

    With ``$NNUNET_VASCULATURE_VERBOSE=1`` the traceback of a fault is printed before its line."""
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only OS/decoder faults are reported; anything else re-raised
        line = describe_fault(e)
        if line is None:
            raise
        if os.environ.get(VERBOSE_ENV) == "1":
            traceback.print_exc()
        print(f"error: {line} (set {VERBOSE_ENV}=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


# import name -> what to pip install, for the dependencies declared in pyproject.toml (and nnU-Net's own);
# tests/test_cli.py checks the names against the installed distributions
PIP_NAMES = {"torch": "torch", "nnunetv2": "nnunetv2", "batchgeneratorsv2": "batchgeneratorsv2",
             "dynamic_network_architectures": "dynamic-network-architectures", "numpy": "numpy", "scipy": "scipy",
             "skimage": "scikit-image", "SimpleITK": "SimpleITK", "tifffile": "tifffile", "zarr": "zarr",
             "numcodecs": "numcodecs", "cc3d": "connected-components-3d", "tqdm": "tqdm",
             "matplotlib": "matplotlib", "dask": "dask[distributed]", "distributed": "dask[distributed]",
             "pycocotools": "pycocotools", "PIL": "pillow", "tensorstore": "tensorstore",
             "imagecodecs": "imagecodecs", "packaging": "packaging",
             "hoa_tools": "nnunet-vasculature[hoa]", "fsspec": "nnunet-vasculature[hoa]",
             "aiohttp": "nnunet-vasculature[hoa]", "neuroglancer": "nnunet-vasculature[view]"}


def describe_missing_dependency(e: ModuleNotFoundError) -> str | None:
    """One line for a third-party module that is not installed; None for a module of this package (a bug).

    Args:
        e: the exception of the failed import.

    Returns:
        e.g. ``this command needs the package 'cc3d' (pip install connected-components-3d)``, or None.
    """
    top = (e.name or "").partition(".")[0]
    if not top or top == __name__.partition(".")[0]:
        return None
    if top not in PIP_NAMES:
        return (f"this command needs the module '{top}', which is not installed (set {VERBOSE_ENV}=1 for the "
                "traceback)")
    spec = f"'{PIP_NAMES[top]}'" if "[" in PIP_NAMES[top] else PIP_NAMES[top]      # quoted for the shell
    needs = ", Python >= 3.11" if PIP_NAMES[top].endswith("[hoa]") else ""
    return f"this command needs the package '{top}' (pip install {spec}{needs})"
