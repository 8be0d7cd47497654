"""The stand-in source task: synthetic contrast CT of a liver with hepatic vessel trees and tumours.

It plays the part of the Medical Segmentation Decathlon's Task008 (hepatic vessel) for the demo's
stand-in source model, in a domain deliberately different from the synthetic HiP-CT kidneys the demo
fine-tunes on, as the real Task008 -> HiP-CT pair is:

==================  ==========================================  ===========================================
                    source (this module, like Task008)          target (synthetic SenNet kidneys)
==================  ==========================================  ===========================================
modality            CT in Hounsfield units (air -1000, fat      HiP-CT, uint16 grey values, z-scored
                    -100, liver ~100, contrast vessels ~200)
voxel               anisotropic 1.5 x 0.8 x 0.8 mm (z, y, x)    isotropic 50 µm
organ               liver-like lobe in fat and muscle            kidney ellipsoid filling the volume
vessels             bright, 0.6-3.4 mm radius, only inside the  bright, 1-4.5 voxels radius, whole kidney
                    liver (0.75-4 voxels in-plane, 0.4-2.3 in z)
other classes       hypodense tumours (label 2)                  none
noise               smoothed (correlated) noise, sd 12-20 HU     white noise, per-kidney gain and offset
==================  ==========================================  ===========================================

Labels: 0 background, 1 vessel, 2 tumour (Task008's classes). Every case is a pure function of its
seed (``numpy.random.default_rng(seed)``), so a held-out case can be regenerated from the seed
recorded with the model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from nnunet_vasculature.synthetic.vessels import VesselTree, grow_tree

SPACING_MM = (1.5, 0.8, 0.8)          # z, y, x (Task008's fullres spacing class)
SHAPE = (40, 96, 96)                  # 60 x 77 x 77 mm, divisible by the stand-in's pooling (4, 8, 8)
CLASSES = {0: "background", 1: "vessel", 2: "tumour"}


def _coords(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Voxel-centre coordinates in mm, one sparse array per axis."""
    return np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)


def source_case(seed: int | Sequence[int], shape: Sequence[int] = SHAPE,
                spacing: Sequence[float] = SPACING_MM) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic CT case: (image in HU as float32, labels as uint8 0/1/2), both of ``shape``."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    extent = np.array(shape) * sp
    zz, yy, xx = _coords(shape, sp)
    # liver lobe: an ellipsoid, shifted and with a wavy outline, filling ~half the field of view
    centre = extent * (0.5 + rng.uniform(-0.08, 0.08, 3))
    semi = extent * rng.uniform(0.36, 0.46, 3)
    semi[0] = extent[0] * rng.uniform(0.45, 0.6)
    u = [(zz - centre[0]) / semi[0], (yy - centre[1]) / semi[1], (xx - centre[2]) / semi[2]]
    r2 = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
    angle = np.arctan2(u[1], u[2])
    wobble = 1 + sum(rng.uniform(0.03, 0.08) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    liver = r2 <= wobble ** 2
    # abdominal wall around it: fat with muscle bands, air in one corner (outside the body)
    body = ((yy - extent[1] * 0.5) / (extent[1] * rng.uniform(0.55, 0.7))) ** 2 \
        + ((xx - extent[2] * 0.5) / (extent[2] * rng.uniform(0.55, 0.7))) ** 2 <= 1.0
    muscle = np.cos(yy * rng.uniform(0.08, 0.15) + xx * rng.uniform(0.02, 0.06) + rng.uniform(0, 6)) > 0.55
    img = np.where(body, np.where(muscle, 50.0, -100.0), -1000.0) + 0 * zz
    shift = rng.uniform(-15, 15)                        # contrast timing differs between scans
    liver_hu = 100.0 + shift
    img = np.where(liver, liver_hu, img)
    # hepatic vessel trees in mm, grown inside the liver's bounding ellipsoid
    box_lo = centre - semi
    tree = grow_tree(rng, 2 * semi, root_radius=rng.uniform(2.6, 3.4), min_radius=0.6, n_roots=int(rng.integers(3, 6)),
                     missing_fraction=0.0)
    tree.p0, tree.p1 = tree.p0 + box_lo, tree.p1 + box_lo
    sd = vessel_distance(shape, sp, tree)
    vessel_signal = 1.0 / (1.0 + np.exp(np.clip(sd / 0.4, -30, 30)))
    vessel_hu = rng.uniform(180, 230) + shift
    img = np.where(liver, img + (vessel_hu - liver_hu) * vessel_signal, img)
    seg = ((sd <= 0) & liver).astype(np.uint8)
    # hypodense tumours inside the liver
    tumour = np.zeros(shape, bool)
    tumour_soft = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(0, 3))):
        c = centre + rng.uniform(-0.5, 0.5, 3) * semi
        r = rng.uniform(4.0, 10.0)
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) - r
        tumour |= (d <= 0) & liver
        tumour_soft = np.maximum(tumour_soft, 1.0 / (1.0 + np.exp(np.clip(d / 0.8, -30, 30))))
    img = np.where(liver, img + (rng.uniform(35, 60) - liver_hu) * tumour_soft * (1 - vessel_signal), img)
    seg[tumour] = 2
    # partial volume along z, then correlated noise
    img = gaussian_filter(img, (0.6, 0.3, 0.3))
    noise = gaussian_filter(rng.normal(0, 1, shape), 0.8)
    img = img + noise / noise.std() * rng.uniform(12, 20)
    return img.astype(np.float32), seg


def vessel_distance(shape: Sequence[int], spacing: Sequence[float], tree: VesselTree, margin: float = 2.0
                    ) -> np.ndarray:
    """Signed distance in mm from each voxel centre to the nearest vessel wall (negative inside), for
    anisotropic voxels; voxels farther than ``margin`` mm from every vessel get +inf."""
    sp = np.asarray(spacing, dtype=float)
    field = np.full(tuple(shape), np.inf, dtype=np.float32)
    for a, b, r in zip(tree.p0, tree.p1, tree.radius):
        lo = np.floor((np.minimum(a, b) - r - margin) / sp).astype(int)
        hi = np.ceil((np.maximum(a, b) + r + margin) / sp).astype(int) + 1
        i0, i1 = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(i1 <= i0):
            continue
        zz, yy, xx = np.meshgrid(*[(np.arange(i0[k], i1[k]) + 0.5) * sp[k] for k in range(3)], indexing="ij",
                                 sparse=True)
        d = b - a
        wz, wy, wx = zz - a[0], yy - a[1], xx - a[2]
        t = np.clip((wz * d[0] + wy * d[1] + wx * d[2]) / float(d.dot(d)), 0.0, 1.0)
        dist = np.sqrt((wz - t * d[0]) ** 2 + (wy - t * d[1]) ** 2 + (wx - t * d[2]) ** 2) - r
        sl = tuple(slice(i0[k], i1[k]) for k in range(3))
        np.minimum(field[sl], dist.astype(np.float32), out=field[sl])
    return field


def ct_normalisation(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict:
    """nnU-Net v1's CT intensity properties from the foreground voxels (labels > 0) of the training cases."""
    fg = np.concatenate([img[lab > 0] for img, lab in zip(images, labels)]).astype(np.float64)
    return {"median": float(np.median(fg)), "mean": float(fg.mean()), "sd": float(fg.std()),
            "mn": float(fg.min()), "mx": float(fg.max()), "percentile_99_5": float(np.percentile(fg, 99.5)),
            "percentile_00_5": float(np.percentile(fg, 0.5))}


def normalise_ct(img: np.ndarray, props: dict) -> np.ndarray:
    """v1's CT normalisation: clip to the foreground's 0.5-99.5 percentiles, then z-score with its mean/sd."""
    clipped = np.clip(img, props["percentile_00_5"], props["percentile_99_5"])
    return ((clipped - props["mean"]) / max(props["sd"], 1e-8)).astype(np.float32)
