"""The probability store: one zarr group, one uint8 array per kidney. ``predict`` and ``stitch`` write
it with :class:`KidneyWriter`; ``tune``, ``apply``, ``submit`` and ``score`` read it.

Schema of ``<store>.zarr/<kidney>``: shape (z, y, x) in the kidney's original grid, dtype uint8, chunks
of one plane, values from :func:`quantize`. Attributes:

- ``kidney``: the kidney's name; ``spacing``: voxel size (z, y, x) in the dataset's units (µm);
- ``slice_ids``: the Kaggle id of every plane (``kidney_5_0000``, ...);
- ``encoding``: ``"uint8 = round(255 * foreground probability)"``;
- ``source``: what produced it (``{"tool": "predict", "model": {...}}`` or ``{"tool": "stitch", ...}``);
- ``planes_done``: planes written so far, in z order; ``complete``: true once every plane is written.
  A store with ``complete`` false is refused by readers and resumed by ``predict``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError

if TYPE_CHECKING:      # zarr is imported by the code that opens stores
    import zarr

ENCODING = "uint8 = round(255 * foreground probability)"
TOLERANCE = 1e-3      # float probabilities may overshoot [0, 1] by rounding this much, no more


def quantize(prob: np.ndarray, where: str) -> np.ndarray:
    """Foreground probabilities -> uint8 levels, the one rule of this package.

    uint8 input is returned as is. Float input must be finite and within [0, 1] up to ``TOLERANCE``
    (float rounding of a softmax or of interpolation); it is clipped to [0, 1] and stored as
    ``round(255 * p)``. NaN, infinities and values further outside are a UserError naming ``where``.
    """
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob
    if not np.isfinite(prob).all():
        raise UserError(f"{where}: probabilities are not finite (NaN or infinity)")
    lo, hi = float(prob.min(initial=0)), float(prob.max(initial=0))
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        raise UserError(f"{where}: probabilities outside [0, 1] (min {lo:.3g}, max {hi:.3g})")
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


def create_kidney_array(group: zarr.Group, kidney: str, shape: tuple[int, int, int], spacing: Sequence[float],
                        slice_ids: Sequence[str], source: dict, **extra: object) -> zarr.Array:
    """A new (or replaced) kidney array of the store with the documented attributes, ``complete`` false,
    ``planes_done`` 0, plus ``extra`` attributes of the writer."""
    arr = group.create_array(kidney, shape=tuple(shape), chunks=(1, *shape[1:]), dtype="uint8", overwrite=True)
    arr.attrs.update({"kidney": kidney, "spacing": [float(s) for s in spacing], "slice_ids": list(slice_ids),
                      "encoding": ENCODING, "source": source, "complete": False, "planes_done": 0, **extra})
    return arr


class KidneyWriter:
    """Writes one kidney's planes into ``group[kidney]`` in z order, buffered, resumable.

    ``source`` identifies the run: an interrupted array is resumed only by a writer with the same
    shape and source; a complete one is refused unless ``overwrite``.
    """

    def __init__(self, group: zarr.Group, kidney: str, shape: tuple[int, int, int], spacing: Sequence[float],
                 slice_ids: list[str], source: dict, overwrite: bool = False, flush_planes: int = 8):
        if len(slice_ids) != shape[0]:
            raise ValueError(f"{kidney}: {len(slice_ids)} slice ids for {shape[0]} planes")
        self.kidney, self.flush_planes = kidney, flush_planes
        self.start = 0
        if kidney in group and not overwrite:
            arr = group[kidney]
            old = dict(arr.attrs)
            if old.get("complete"):
                raise UserError(f"{group.store}: '{kidney}' is already written (pass --overwrite)")
            if tuple(arr.shape) != tuple(shape) or old.get("source") != source:
                raise UserError(f"{group.store}: '{kidney}' holds an interrupted run made with other "
                                f"settings (pass --overwrite)")
            self.start = int(old.get("planes_done", 0))
        else:
            arr = create_kidney_array(group, kidney, shape, spacing, slice_ids, source)
        self.arr = arr
        self.buf: list[np.ndarray] = []
        self.buf_start = self.start

    def __call__(self, z: int, planes: np.ndarray) -> None:
        """Write planes ``z, z + 1, ...`` (float probabilities or uint8 levels); z must follow on."""
        if z != self.buf_start + len(self.buf):
            raise RuntimeError(f"{self.kidney}: plane {z} out of order")
        self.buf.extend(quantize(planes, f"{self.kidney} plane {z}"))
        if len(self.buf) >= self.flush_planes:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            end = self.buf_start + len(self.buf)
            self.arr[self.buf_start:end] = np.stack(self.buf)
            self.arr.attrs["planes_done"] = end
            self.buf, self.buf_start = [], end

    def close(self) -> None:
        self.flush()
        if self.buf_start != self.arr.shape[0]:
            raise RuntimeError(f"{self.kidney}: {self.buf_start} of {self.arr.shape[0]} planes written")
        self.arr.attrs["complete"] = True


__all__ = ["ENCODING", "quantize", "create_kidney_array", "KidneyWriter"]
