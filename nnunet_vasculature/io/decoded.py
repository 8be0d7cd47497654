"""Reads of a zarr array that turn a chunk that cannot be decoded into one line naming the store and the region
(below the store and image modules, which both wrap their arrays in it)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from nnunet_vasculature.errors import UserError


async def _wait_for_other_tasks(timeout: float) -> None:
    """Wait (at most ``timeout`` s) for every other task of the running event loop to finish."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=timeout)


def settle_zarr_reads(timeout: float = 30.0) -> None:
    """Let the reads of a failed zarr call finish before the error goes on.

    zarr reads a block's chunks as concurrent tasks on its own event loop; when one chunk fails, the call raises
    at once and the others keep running. Left so, a process that exits on the error finds them pending and
    asyncio prints "Task was destroyed but it is pending!" for each (issue 35 item 17): they are waited for
    here (not cancelled: other threads' reads on the same loop are left alone).

    Args:
        timeout: seconds to wait at most.
    """
    from zarr.core.sync import sync
    try:
        sync(_wait_for_other_tasks(timeout))
    except Exception:  # noqa: BLE001 - settling is best effort: the caller's error is the one to report
        pass


def _region(key: object, shape: tuple[int, ...]) -> str:
    """The part of an array a read asked for, for messages: ``planes 0..31`` or ``region [0:512, 1024:2048]``."""
    def bounds(sl: slice, n: int) -> tuple[int, int]:
        return sl.start or 0, n if sl.stop is None else min(sl.stop, n)
    if isinstance(key, slice):
        a, b = bounds(key, shape[0])
        return f"planes {a}..{b - 1}"
    if isinstance(key, tuple) and all(isinstance(k, slice) for k in key):
        return "region [" + ", ".join("{}:{}".format(*bounds(k, n)) for k, n in zip(key, shape)) + "]"
    return "a chunk"


class DecodedArray:
    """A zarr array whose reads turn a chunk that cannot be decoded (a corrupt or truncated file) into a
    one-line UserError naming the store and the planes; everything else is the array's."""

    def __init__(self, array: object, path: Path):
        self._array, self._path = array, path

    def __getattr__(self, name: str) -> object:
        return getattr(self._array, name)

    def __getitem__(self, key: object) -> np.ndarray:
        try:
            return self._array[key]
        except (RuntimeError, ValueError, OSError) as e:
            settle_zarr_reads()
            raise UserError(f"{self._path}: {_region(key, self._array.shape)} cannot be read "
                            f"({type(e).__name__}: {e})") from None

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return len(self._array)
