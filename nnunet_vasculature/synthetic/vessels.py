"""Random branching vessel trees in physical units (µm), shared by the synthetic kidneys, the stand-in
source task and the metric benchmark."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class VesselTree:
    p0: np.ndarray      # (N, 3) segment starts, µm (z, y, x)
    p1: np.ndarray      # (N, 3) segment ends
    radius: np.ndarray  # (N,) µm
    labelled: np.ndarray  # (N,) bool: drawn in the labels


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    v -= v.dot(d) * d
    return v / np.linalg.norm(v)


def grow_tree(rng: np.random.Generator, extent: np.ndarray, root_radius: float, min_radius: float,
              n_roots: int, missing_fraction: float) -> VesselTree:
    """Random branching trees inside an ellipsoid; radii shrink at each bifurcation."""
    segs: list[tuple[np.ndarray, np.ndarray, float, int]] = []   # (p0, p1, r, parent)
    centre = extent / 2
    stack = []
    for _ in range(n_roots):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        start = centre - direction * extent * 0.35   # enter from the rim, like the hilum
        stack.append((start, direction, root_radius, -1))
    while stack:
        p, d, r, parent = stack.pop()
        if r < min_radius:
            continue
        length = r * rng.uniform(5.0, 9.0) + 2 * min_radius
        q = p + d * length
        if np.sum(((q - centre) / (extent * 0.48)) ** 2) > 1.0:
            continue   # left the kidney
        segs.append((p, q, r, parent))
        me = len(segs) - 1
        for sign in (1, -1):
            angle = rng.uniform(0.35, 0.75) * sign
            axis = _perpendicular(d, rng)
            nd = np.cos(angle) * d + np.sin(angle) * axis
            nd /= np.linalg.norm(nd)
            stack.append((q, nd, r * rng.uniform(0.68, 0.82), me))
    p0 = np.array([s[0] for s in segs]).reshape(-1, 3)
    p1 = np.array([s[1] for s in segs]).reshape(-1, 3)
    radius = np.array([s[2] for s in segs])
    parent = np.array([s[3] for s in segs], dtype=np.int64)
    labelled = np.ones(len(segs), dtype=bool)
    # sparse annotation: drop whole sub-trees until the wanted share of branches is missing
    children: dict[int, list[int]] = {}
    for i, par in enumerate(parent):
        children.setdefault(int(par), []).append(i)
    candidates = [i for i in range(len(segs)) if parent[i] >= 0]
    rng.shuffle(candidates)
    for i in candidates:
        if (~labelled).mean() >= missing_fraction:
            break
        todo = [i]
        while todo:
            j = todo.pop()
            labelled[j] = False
            todo.extend(children.get(j, []))
    return VesselTree(p0, p1, radius, labelled)


def segment_field(block_origin: np.ndarray, shape: tuple[int, int, int], voxel: float,
                   tree: VesselTree, only_labelled: bool, margin: float) -> np.ndarray:
    """Signed distance (µm) to the nearest vessel wall inside one z-block (positive outside)."""
    field = np.full(shape, np.inf, dtype=np.float32)
    lo_block = block_origin
    hi_block = block_origin + np.array(shape) * voxel
    for a, b, r, lab in zip(tree.p0, tree.p1, tree.radius, tree.labelled):
        if only_labelled and not lab:
            continue
        lo = np.minimum(a, b) - r - margin
        hi = np.maximum(a, b) + r + margin
        if np.any(hi < lo_block) or np.any(lo > hi_block):
            continue
        i0 = np.clip(np.floor((lo - lo_block) / voxel).astype(int), 0, shape)
        i1 = np.clip(np.ceil((hi - lo_block) / voxel).astype(int) + 1, 0, shape)
        if np.any(i1 <= i0):
            continue
        axes = [lo_block[k] + (np.arange(i0[k], i1[k]) + 0.5) * voxel for k in range(3)]
        zz, yy, xx = np.meshgrid(*axes, indexing="ij", sparse=True)
        d = b - a
        dd = float(d.dot(d))
        wz, wy, wx = zz - a[0], yy - a[1], xx - a[2]
        t = np.clip((wz * d[0] + wy * d[1] + wx * d[2]) / dd, 0.0, 1.0)
        dist = np.sqrt((wz - t * d[0]) ** 2 + (wy - t * d[1]) ** 2 + (wx - t * d[2]) ** 2) - r
        sl = tuple(slice(i0[k], i1[k]) for k in range(3))
        np.minimum(field[sl], dist.astype(np.float32), out=field[sl])
    return field
