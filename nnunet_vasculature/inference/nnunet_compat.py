"""The parts of nnU-Net's preprocessing and export that streaming prediction has to re-implement.

Follows nnunetv2 2.8.1. Stock nnU-Net holds the whole (cropped, resampled) volume in memory; the
streaming predictor (:mod:`nnunet_vasculature.inference.streaming`) sees it a few planes at a time, so
every step that needs the whole volume is re-implemented here, once, next to the stock function it
mirrors (everything else, e.g. ``compute_new_shape``, ``determine_do_sep_z_and_axis``,
``compute_steps_for_sliding_window``, ``compute_gaussian``, ``CTNormalization``, ``NoNormalization``,
the mirroring TTA and the label manager's inference nonlinearity, is nnU-Net's own code, called):

- :func:`nonzero_bbox_and_stats` mirrors ``preprocessing.cropping.cropping.crop_to_nonzero`` (its
  bounding box; filling holes in the mask cannot change a bounding box) and the statistics that
  ``ZScoreNormalization.run`` computes on the cropped image, gathered in one pass over z-blocks.
- :func:`make_normalizer` mirrors ``DefaultPreprocessor._normalize`` for one channel without
  ``use_mask_for_norm``: the point-wise schemes are nnU-Net's classes
  (``preprocessing.normalization.default_normalization_schemes``) applied block by block;
  ``ZScoreNormalization`` is re-implemented (:func:`zscore_normalizer`) with whole-volume statistics.
- :class:`Resampling` mirrors the choice ``preprocessing.resampling.default_resampling.
  resample_data_or_seg_to_shape`` makes (separate z or not, spline orders) from its keyword arguments.
- :func:`z_coord`, :func:`input_range`, :func:`inplane`, :func:`along_z` and :func:`resample_slab` mirror
  ``default_resampling.resample_data_or_seg`` (``is_seg=False``) for a slab of output planes.
- :func:`pad_to_patch` mirrors ``acvl_utils.cropping_and_padding.padding.pad_nd_image`` as
  ``nnUNetPredictor.predict_sliding_window_return_logits`` calls it (zero padding to at least the patch).

Slab-wise resampling: nnU-Net resamples a whole volume with skimage ``resize`` (spline of ``order``,
edge mode, clipped to the input's range), or, with separate z, each plane in-plane (clipped per plane)
and then along z with ``map_coordinates`` of ``order_z`` (not clipped). A tensor-product spline is
separable, so the same result is obtained per z-plane in-plane and then along z; along z a slab needs
only a small halo of neighbouring planes (the cubic prefilter's influence decays as 0.27^n) while every
output plane keeps the whole volume's coordinate mapping. Known difference: without separate z and with
``order > 1`` stock clips to the range of the whole input; :func:`resample_slab` needs that range passed
in (known for the normalised image from the streaming pass, not for logits: the streaming predictor
resamples probabilities with ``order 1`` as in nnU-Net's default plans, where no clipping is needed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["NNUNET_VERSION", "HALO", "SUPPORTED_NORMALIZATION", "Resampling", "nonzero_bbox_and_stats",
           "zscore_normalizer", "make_normalizer", "normalized_range", "pad_to_patch", "z_coord", "input_range",
           "inplane", "along_z", "resample_slab", "resample_inplane", "resample_along_z"]

NNUNET_VERSION = "2.8.1"
HALO = 12   # input planes beyond the interpolation support for cubic splines (0.27^12 < 1e-6)
SUPPORTED_NORMALIZATION = ("ZScoreNormalization", "CTNormalization", "NoNormalization")

BBox = list[tuple[int, int]]
Reader = Callable[[int, int], np.ndarray]


# ---- cropping and intensity statistics -------------------------------------------------------------
def _merge(n: int, mean: float, m2: float, n_b: int, mean_b: float, m2_b: float) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations of two groups together (Chan et al.)."""
    total = n + n_b
    d = mean_b - mean
    return total, mean + d * n_b / total, m2 + m2_b + d * d * n * n_b / total


def nonzero_bbox_and_stats(read: Reader, shape: tuple[int, int, int], block: int = 16
                           ) -> tuple[BBox | None, dict | None]:
    """Bounding box of the non-zero voxels (``crop_to_nonzero``) and mean, std, min and max of the
    cropped volume, in one pass over z-blocks ``read(z0, z1)`` -> (n, y, x).

    Voxels outside the box are zero, so the non-zero voxels of the volume are those of the crop; the
    crop's zeros are added at the end. ``(None, None)`` for an all-zero volume (stock crops nothing then
    and predicts background)."""
    Z, Y, X = shape
    zs, ys, xs = np.zeros(Z, bool), np.zeros(Y, bool), np.zeros(X, bool)
    n, mean, m2 = 0, 0.0, 0.0
    lo, hi = np.inf, -np.inf
    for z0 in range(0, Z, block):
        b = read(z0, min(Z, z0 + block))
        nz = b != 0
        zs[z0:z0 + len(b)] = nz.any(axis=(1, 2))
        ys |= nz.any(axis=(0, 2))
        xs |= nz.any(axis=(0, 1))
        v = b[nz].astype(np.float64)
        if v.size:
            mb = float(v.mean())
            n, mean, m2 = _merge(n, mean, m2, v.size, mb, float(((v - mb) ** 2).sum()))
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if not zs.any():
        return None, None
    bbox = [(int(np.argmax(a)), int(len(a) - np.argmax(a[::-1]))) for a in (zs, ys, xs)]
    size = int(np.prod([b - a for a, b in bbox]))
    if size > n:
        n, mean, m2 = _merge(n, mean, m2, size - n, 0.0, 0.0)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return bbox, {"mean": mean, "std": float(np.sqrt(m2 / n)), "min": lo, "max": hi}


# ---- normalisation ------------------------------------------------------------------------------------
def zscore_normalizer(mean: float, std: float) -> Callable[[np.ndarray], np.ndarray]:
    """``ZScoreNormalization.run`` (no mask, float32) with the whole volume's ``mean`` and ``std``."""
    eps = 1e-8

    def run(x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float32)
        out -= mean
        out /= max(std, eps)
        return out
    return run


def make_normalizer(scheme: str, intensity_properties: dict | None, stats: dict
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """Normalisation of blocks of the cropped volume, equal to ``DefaultPreprocessor._normalize`` of the
    whole crop. ``stats`` from :func:`nonzero_bbox_and_stats`; ``intensity_properties`` is the plans'
    ``foreground_intensity_properties_per_channel["0"]``. The input block is never modified."""
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes
    if scheme == "ZScoreNormalization":
        return zscore_normalizer(stats["mean"], stats["std"])
    if scheme not in SUPPORTED_NORMALIZATION:
        raise ValueError(f"normalization {scheme} is not supported block-wise")
    # CTNormalization and NoNormalization are point-wise given the dataset's intensity properties
    norm = getattr(schemes, scheme)(use_mask_for_norm=False, intensityproperties=dict(intensity_properties or {}))
    return lambda x: norm.run(np.array(x, dtype=np.float32))     # run() works in place on float32 input


def normalized_range(norm: Callable[[np.ndarray], np.ndarray], stats: dict) -> tuple[float, float]:
    """Min and max of the normalised crop (the supported normalisations are monotonic)."""
    lo, hi = norm(np.array([stats["min"], stats["max"]]))
    return float(lo), float(hi)


# ---- padding ------------------------------------------------------------------------------------------
def pad_to_patch(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Shape after padding to at least ``patch`` and the offset of the data in it (odd padding puts the
    larger half after the data)."""
    padded = [max(s, p) for s, p in zip(shape, patch)]
    return padded, [(p - s) // 2 for s, p in zip(shape, padded)]


# ---- resampling ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resampling:
    """How ``resample_data_or_seg_to_shape(data, new_shape, current_spacing, new_spacing, **kwargs)``
    resamples: ``order`` in-plane (or along every axis), ``order_z`` along the low-resolution axis
    ``axis`` when ``separate_z``."""
    separate_z: bool
    axis: int | None
    order: int
    order_z: int

    @classmethod
    def from_kwargs(cls, kwargs: dict, current_spacing: Sequence[float], new_spacing: Sequence[float]
                    ) -> Resampling:
        """``kwargs``: the configuration's ``resampling_fn_*_kwargs`` (missing keys take the function's
        defaults: order 3, order_z 0, force_separate_z False)."""
        from nnunetv2.configuration import ANISO_THRESHOLD
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
        sep, axis = determine_do_sep_z_and_axis(kwargs.get("force_separate_z", False), current_spacing,
                                                new_spacing,
                                                kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
        return cls(bool(sep), None if axis is None else int(axis), int(kwargs.get("order", 3)),
                   int(kwargs.get("order_z", 0)))

    @property
    def z_order(self) -> int:
        """Spline order along z."""
        return self.order_z if self.separate_z else self.order


def z_coord(o: npt.ArrayLike, n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of output plane ``o`` (grid mode, as skimage, scipy zoom and nnU-Net)."""
    return (np.asarray(o, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def input_range(o0: int, o1: int, n_in: int, n_out: int, order: int) -> tuple[int, int]:
    """Input planes [a, b) needed for output planes [o0, o1)."""
    if n_in == n_out:
        return o0, o1
    c = z_coord([o0, o1 - 1], n_in, n_out)
    halo = HALO if order > 1 else 1
    return max(0, int(np.floor(c[0])) - halo), min(n_in, int(np.floor(c[1])) + 2 + halo)


def inplane(planes: np.ndarray, out_yx: tuple[int, int], order: int, clip: bool) -> np.ndarray:
    """Resize each (y, x) plane of ``planes`` (n, y, x) like skimage/nnU-Net."""
    if tuple(planes.shape[1:]) == tuple(out_yx):
        return planes
    return np.stack([resize(p, out_yx, order=order, mode="edge", anti_aliasing=False, clip=clip)
                     for p in planes])


def along_z(planes: np.ndarray, first: int, n_in: int, out_idx: np.ndarray, n_out: int, order: int) -> np.ndarray:
    """Interpolate output planes ``out_idx`` from input planes ``planes`` = input[first:first+n]."""
    if n_in == n_out:   # only in-plane resampling: every spline reproduces the planes at integer positions
        return planes[np.asarray(out_idx) - first]
    c = z_coord(out_idx, n_in, n_out)
    if order == 0:      # scipy order 0: nearest, clamped (mode 'nearest')
        i = np.clip(np.floor(c + 0.5).astype(int), 0, n_in - 1) - first
        return planes[i]
    if order == 1:
        c = np.clip(c, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        t = (c - lo)[:, None, None]
        return planes[lo - first] * (1 - t) + planes[hi - first] * t
    # cubic: scipy's spline machinery along z only (integer positions in y/x reproduce the data)
    n, h, w = planes.shape
    flat = planes.reshape(n, h * w)
    step = n_in / n_out
    out = ndi.affine_transform(flat, np.array([step, 1.0]), offset=(c[0] - first, 0.0),
                               output_shape=(len(out_idx), h * w), order=order, mode="nearest")
    return out.reshape(len(out_idx), h, w)


def resample_slab(planes: np.ndarray, first: int, n_in: int, out: range, out_shape: tuple[int, int, int],
                  rs: Resampling, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Output planes ``out`` of ``resample_data_or_seg(volume, out_shape, ...)`` (one channel), from the
    input planes ``planes`` = volume[first:first+n], which must cover
    ``input_range(out.start, out.stop, n_in, out_shape[0], rs.z_order)``. ``value_range``: min and max of the
    whole input, which stock clips to without separate z (skimage ``resize``).

    The two steps are also available apart: :func:`resample_inplane` works plane by plane (its planes can be
    computed once and shared by neighbouring slabs), :func:`resample_along_z` on the slab."""
    x = resample_inplane(planes, tuple(out_shape[1:]), rs)
    return resample_along_z(x, first, n_in, out, out_shape[0], rs, value_range)


def resample_inplane(planes: np.ndarray, out_yx: tuple[int, int], rs: Resampling) -> np.ndarray:
    """First step of :func:`resample_slab`: each input plane as float64, resized in-plane."""
    return inplane(np.asarray(planes, dtype=np.float64), tuple(out_yx), rs.order, clip=rs.separate_z)


def resample_along_z(x: np.ndarray, first: int, n_in: int, out: range, n_out: int, rs: Resampling,
                     value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Second step of :func:`resample_slab`: output planes ``out`` from the in-plane resized input planes
    ``x`` = input[first:first+n] (the result depends, by float rounding, on the slab's extent)."""
    x = along_z(x, first, n_in, np.arange(out.start, out.stop), n_out, rs.z_order)
    if not rs.separate_z and rs.order > 1 and value_range is not None:
        x = np.clip(x, *value_range)
    return x
