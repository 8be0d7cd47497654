"""Slab-wise versions of nnU-Net's default resampling (``resample_data_or_seg_to_shape``).

nnU-Net resamples a whole volume with skimage ``resize`` (spline of ``order``, edge mode, clipped to
the input's range), or, for anisotropic spacing, in-plane per slice and along z with ``order_z``. A
tensor-product spline is separable, so the same result is obtained per z-plane in-plane and then
along z; along z a slab needs only a small halo of neighbouring planes (the cubic prefilter's
influence decays as 0.27^n) while every output plane keeps the whole volume's coordinate mapping.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

HALO = 12   # input planes beyond the interpolation support for cubic splines (0.27^12 < 1e-6)


def z_coord(o, n_in: int, n_out: int):
    """Input coordinate of output plane ``o`` (grid mode, as skimage/scipy zoom and nnU-Net)."""
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
