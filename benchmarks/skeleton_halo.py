"""How large a halo the slab-wise Lee skeleton needs to equal the whole-volume one, by shape and radius R.

For each shape, the slab skeleton (cores of R/2 planes, so every depth of cut is tried) is compared with
scikit-image's whole-volume Lee skeleton for fixed halos of 0.5 R, R, 1.5 R, 2 R and 3 R, and for the thickness-
following halo the scorer uses (smallest halo 8, grown to 2 R + 8 from the planes' disk radius bounds).

    .venv/bin/python benchmarks/skeleton_halo.py [--radii 6 10 16 24 32]

``--kidney Z H W [--planes N]`` instead measures the default slab geometry (96-plane cores, 48-plane halo, fixed
and grown) on the synthetic vessel pair of ``kidney_metrics.py`` (labels and prediction) of that shape, or on N planes
from its middle (``--kidney 2279 1303 912 --planes 384``: a piece of the whole-kidney pair, vessels up to radius 23).
"""
from __future__ import annotations

import argparse
from itertools import islice

import numpy as np

from benchmarks.common import table
from nnunet_vasculature.metrics.skeleton import skeleton_difference


def capsule(shape: tuple[int, int, int], a, b, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of the segment a-b."""
    z, y, x = np.indices(shape, dtype=np.float32)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d = b - a
    w = np.stack([z - a[0], y - a[1], x - a[2]])
    t = np.clip(np.tensordot(d, w, 1) / d.dot(d), 0, 1)
    return ((w - t[None] * d[:, None, None, None]) ** 2).sum(0) <= radius * radius


def oblique(centre, direction, half_length: float):
    """End points of a segment through ``centre`` along ``direction``."""
    c, d = np.asarray(centre, float), np.asarray(direction, float)
    d = d / np.linalg.norm(d) * half_length
    return c - d, c + d


def shapes(r: int) -> dict[str, np.ndarray]:
    tall, wide = (8 * r, 3 * r, 3 * r), (6 * r, 3 * r, 6 * r)
    mid = 1.5 * r
    return {
        "cylinder along z": capsule(tall, (-r, mid, mid), (9 * r, mid, mid), r),
        "oblique cylinder (1, 0.6, 0.3)": capsule(tall, *oblique((4 * r, mid, mid), (1, 0.6, 0.3), 6 * r), r),
        "cylinder at 45 degrees": capsule(wide, *oblique((3 * r, mid, 3 * r), (1, 0, 1), 6 * r), r),
        "cylinder in-plane": capsule(wide, (3 * r, mid, -r), (3 * r, mid, 7 * r), r),
        "ball of radius 1.4 R": capsule(wide, (3 * r, mid, 3 * r), (3 * r, mid, 3 * r + 1e-3), 1.4 * r),
        "Y junction": capsule(wide, (0, mid, 3 * r), (3 * r, mid, 3 * r), r)
        | capsule(wide, (3 * r, mid, 3 * r), (6 * r, mid, 0.5 * r), 0.7 * r)
        | capsule(wide, (3 * r, mid, 3 * r), (6 * r, mid, 5.5 * r), 0.7 * r),
    }


def kidney(shape: tuple[int, int, int], planes: int | None) -> None:
    import time

    from kidney_metrics import vessel_pair_slabs
    middle = (shape[0] // 2) // planes if planes else 0
    pred, gt = next(islice(vessel_pair_slabs(shape, slab=planes), middle, None))
    z0 = middle * (planes or 0)
    where = f"{shape[0]}x{shape[1]}x{shape[2]}" + (f", planes {z0}..{z0 + len(gt) - 1}" if planes else "")
    print(f"{where}: foreground {gt.mean():.2%} (labels), {pred.mean():.2%} (prediction)")
    rows = []
    for name, vol in (("labels", gt), ("prediction", pred)):
        row = [where, name]
        for grow in (False, True):
            t = time.perf_counter()
            row += [skeleton_difference(vol, follow_thickness=grow), f"{time.perf_counter() - t:.0f}"]
        rows.append(row)
        print(rows[-1], flush=True)
    seconds = "s (slabs + whole)"
    print(table(rows, ["volume", "mask", "differing voxels, halo 48", seconds, "differing voxels, grown", seconds]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--radii", type=int, nargs="+", default=[6, 10, 16, 24, 32])
    ap.add_argument("--kidney", type=int, nargs=3, metavar=("Z", "H", "W"))
    ap.add_argument("--planes", type=int, help="with --kidney: N planes from the middle of the pair")
    a = ap.parse_args()
    if a.kidney:
        return kidney(tuple(a.kidney), a.planes)
    factors = (0.5, 1, 1.5, 2, 3)
    rows = []
    for r in a.radii:
        for name, vol in shapes(r).items():
            core = max(r // 2, 2)
            fixed = [skeleton_difference(vol, core, max(int(f * r), 1), follow_thickness=False) for f in factors]
            grown = skeleton_difference(vol, core, 8)
            rows.append([r, name, *fixed, grown])
            print(table([rows[-1]], ["R", "shape", *(f"{f} R" for f in factors), "grown"]).splitlines()[-1],
                  flush=True)
    print("\nvoxels where the slab skeleton differs from the whole-volume skeleton")
    print(table(rows, ["R", "shape", *(f"halo {f} R" for f in factors), "grown from 8"]))


if __name__ == "__main__":
    main()
