"""Per-kidney intensity mapping by percentiles (SenNet's 4th place normalised each kidney by its own
10th / 99.8th percentile), for HiP-CT's kidney-to-kidney intensity drift.

Each volume's percentiles ``low``/``high`` of its non-zero intensities are estimated from a fixed sample
of it (:func:`volume_percentiles`: up to :data:`SAMPLE_PLANES` evenly spaced planes, each subsampled on a
regular grid of at most :data:`SAMPLE_PER_PLANE` pixels; the sample's percentile is one of its values,
numpy's ``inverted_cdf``), and the volume is mapped linearly so that ``low`` -> :data:`TO` [0] = 1 and
``high`` -> :data:`TO` [1] = 65535, rounded and clipped to [1, 65535]: values below ``low`` and above
``high`` are clipped to the kidney's own percentiles (:func:`apply`). Zero voxels (no data, e.g. outside
the scanned field) stay zero, so nnU-Net's crop to the non-zero box is unchanged.

Why clipping: a gain/offset drift alone is undone by nnU-Net's per-case z-score (the scheme it plans for a
non-CT channel) and by the instance norm after the networks' first convolution; what a per-kidney
percentile normalisation adds is where each kidney saturates. The mapping is applied by
``convert sennet --percentile_norm`` before writing the nnU-Net images (so nnU-Net's own fingerprint,
normalisation and training see mapped images) and recorded in the dataset's ``dataset.json``
(``intensity_mapping``, copied by nnU-Net into the model folder) and per kidney in ``sennet_cases.json``;
``predict`` reads the model's ``dataset.json`` and maps each input volume with its own percentiles in the
same way (:func:`map_sources`), unless the input is a converted dataset already mapped alike.
The values written at conversion and those predicted from are the same numbers (tested).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError

SAMPLE_PLANES = 128
SAMPLE_PER_PLANE = 65536
TO = (1.0, 65535.0)            # where low and high land (then clipped there); 0 is kept for no data
KEY = "intensity_mapping"      # in dataset.json


@dataclass(frozen=True)
class PercentileMapping:
    low: float = 10.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 100:
            raise UserError(f"--percentile_norm {self.low:g} {self.high:g}: need 0 <= LOW < HIGH <= 100")

    def to_json(self) -> dict:
        return {"method": "percentile", "percentiles": [self.low, self.high], "to": list(TO)}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "PercentileMapping":
        if d.get("method") != "percentile" or list(d.get("to", [])) != list(TO):
            raise UserError(f"{where}: {KEY} {d} is not one this version knows")
        return cls(*(float(p) for p in d["percentiles"]))


def sample_indices(n: int) -> np.ndarray:
    """The planes sampled from a volume of ``n`` planes (evenly spaced, first and last included)."""
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLE_PLANES)).round().astype(int))


def plane_stride(shape_yx: Sequence[int]) -> int:
    return max(1, int(np.ceil(np.sqrt(shape_yx[0] * shape_yx[1] / SAMPLE_PER_PLANE))))


def volume_percentiles(read_plane: Callable[[int], np.ndarray], n_planes: int, shape_yx: Sequence[int],
                       mapping: PercentileMapping) -> tuple[float, float]:
    """The ``mapping``'s low/high percentiles of the non-zero voxels of a volume of ``n_planes`` planes of
    ``shape_yx``, from its sample; ``read_plane(z)`` -> (y, x). Memory: the sample only (at most
    128 x 65536 values). An all-zero sample gives (0, 0)."""
    s = plane_stride(shape_yx)
    sample = np.concatenate([np.asarray(read_plane(int(z)))[::s, ::s].ravel().astype(np.float64)
                             for z in sample_indices(n_planes)])
    sample = sample[sample != 0]
    if not sample.size:
        return 0.0, 0.0
    lo, hi = np.percentile(sample, [mapping.low, mapping.high], method="inverted_cdf")
    return float(lo), float(hi)


def apply(x: np.ndarray, low: float, high: float, dtype: type = np.uint16) -> np.ndarray:
    """``x`` mapped so that ``low`` -> TO[0] and ``high`` -> TO[1], rounded, clipped to TO; zeros stay 0."""
    x = np.asarray(x, dtype=np.float64)
    scale = (TO[1] - TO[0]) / max(high - low, 1e-6)
    y = np.clip(np.rint((x - low) * scale + TO[0]), *TO)
    y[x == 0] = 0
    return y.astype(dtype)


def model_mapping(model_folder: Path) -> PercentileMapping | None:
    """The mapping a trained model's images went through (its ``dataset.json``), or None."""
    f = Path(model_folder) / "dataset.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text()).get(KEY)
    return None if d is None else PercentileMapping.from_json(d, str(f))


def map_sources(sources: list, mapping: PercentileMapping | None, log: Callable[[str], None] = print) -> list:
    """Input volumes (``io.volume_source.VolumeSource``) as the model saw its training images: each mapped with
    its own percentiles when the model's images were mapped. A volume of a converted dataset that was
    mapped alike is passed through; one mapped differently, or mapped for a model that was not, is an
    error."""
    out = []
    for src in sources:
        done = src.intensity
        if done is not None:
            if mapping is None or done["mapping"] != mapping.to_json():
                raise UserError(f"{src.name}: its images were intensity-mapped at conversion ({done['mapping']}) "
                                f"but the model's images were {'not' if mapping is None else mapping.to_json()}")
            out.append(src)
            continue
        if mapping is None:
            out.append(src)
            continue
        lo, hi = volume_percentiles(lambda z: src.read(z, z + 1)[0], src.shape[0], src.shape[1:], mapping)
        log(f"{src.name}: intensity percentiles {mapping.low:g}/{mapping.high:g} = {lo:g}/{hi:g}, "
            f"mapped to {TO[0]:g}/{TO[1]:g} as the model's training images")
        parts = [(a, b, _mapped(reader, lo, hi)) for a, b, reader in src.parts]
        out.append(dataclasses.replace(src, parts=parts,
                                       intensity={"mapping": mapping.to_json(), "low": lo, "high": hi}))
    return out


def _mapped(reader: Callable[[int, int], np.ndarray], lo: float, hi: float) -> Callable[[int, int], np.ndarray]:
    return lambda a, b: apply(reader(a, b), lo, hi, np.float32)
