"""User-facing errors and all-or-nothing output helpers."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator


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
    """Yield a temporary path next to ``final``; renamed to ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, final)


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, run, and turn UserError into one line on stderr with a non-zero exit."""
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
