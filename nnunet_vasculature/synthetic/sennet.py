"""Synthetic HiP-CT-like kidneys written in the exact Kaggle layout.

Vessels are branching trees defined in physical units (µm), so a kidney generated at a coarser
voxel size (kidney_6, 63.08 µm) shows the same anatomy with thinner vessels in voxels, like the real
data. Every volume is produced block by block along z: memory is bounded by one block even for the
``--scale full`` kidney of the real kidney_1_dense shape.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import atomic_dir
from nnunet_vasculature.io.rle import EMPTY_RLE, rle_encode
from nnunet_vasculature.synthetic.common import write_csv
from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field


@dataclass(frozen=True)
class KidneySpec:
    name: str
    split: str                      # "train" or "test"
    voxel_um: float
    extent_um: tuple[float, float, float]   # physical size (z, y, x)
    missing_fraction: float = 0.0   # share of branches left out of the labels (sparse kidneys)
    dense_range: tuple[float, float] | None = None   # kidney_3_dense: labelled fraction of slices


SMALL = [
    KidneySpec("kidney_1_dense", "train", 50.0, (2400, 4800, 4400)),
    KidneySpec("kidney_2", "train", 50.0, (2200, 4400, 4800), missing_fraction=0.35),
    KidneySpec("kidney_3_sparse", "train", 50.16, (2400, 4800, 4800), missing_fraction=0.15,
               dense_range=(0.25, 0.75)),
    KidneySpec("kidney_5", "test", 50.28, (2000, 4400, 4000)),
    KidneySpec("kidney_6", "test", 63.08, (2200, 4400, 4000)),
]
FULL = [KidneySpec("kidney_1_dense", "train", 50.0, (2279 * 50.0, 1303 * 50.0, 912 * 50.0))]


class SyntheticKidney:
    """One synthetic kidney, produced block by block along z."""

    def __init__(self, spec: KidneySpec, seed: int, index: int, full: bool):
        self.spec = spec
        self.seed, self.index = seed, index
        own = np.random.default_rng([seed, index, 104729])  # per-kidney appearance
        self.extent = np.array(spec.extent_um, dtype=float)
        self.shape = tuple(int(round(e / spec.voxel_um)) for e in self.extent)
        ref = 50.0  # radii are given in voxels of a 50 µm reference kidney
        self.tree = grow_tree(np.random.default_rng([seed, index]), self.extent, (12.0 if full else 4.5) * ref,
                              1.0 * ref,
                              12 if full else 4, spec.missing_fraction)
        self.waves = [(own.normal(size=3) * 2 * np.pi / own.uniform(400, 1600), own.uniform(0, 2 * np.pi),
                       own.uniform(600, 1500)) for _ in range(4)]
        self.gain = own.uniform(0.8, 1.2)
        self.offset = own.uniform(-2000, 3000)

    def block(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (uint16), full label and sparse label (uint8 0/1) for slices [z0, z1)."""
        v = self.spec.voxel_um
        shape = (z1 - z0, self.shape[1], self.shape[2])
        origin = np.array([z0 * v, 0.0, 0.0])
        coords = [origin[k] + (np.arange(shape[k]) + 0.5) * v for k in range(3)]
        zz, yy, xx = np.meshgrid(*coords, indexing="ij", sparse=True)
        c = self.extent / 2
        inside = ((zz - c[0]) / (0.47 * self.extent[0])) ** 2 + ((yy - c[1]) / (0.47 * self.extent[1])) ** 2 \
            + ((xx - c[2]) / (0.47 * self.extent[2])) ** 2 <= 1.0
        sd_all = segment_field(origin, shape, v, self.tree, False, 2 * v)
        texture = np.zeros(shape, dtype=np.float32)
        for k, phase, amp in self.waves:
            texture += (amp * np.cos(k[0] * zz + k[1] * yy + k[2] * xx + phase)).astype(np.float32)
        noise = np.random.default_rng([self.seed, self.index, z0]).normal(0, 900, size=shape).astype(np.float32)
        vessel_signal = 7000.0 / (1.0 + np.exp(np.clip(sd_all / (0.6 * v), -30, 30)))
        img = np.where(inside, 14000.0 + texture + vessel_signal, 2500.0) + noise
        img = np.clip(img * self.gain + self.offset, 0, 65535).astype(np.uint16)
        label = ((sd_all <= 0) & inside).astype(np.uint8)
        if self.tree.labelled.all():
            sparse = label
        else:
            sd_lab = segment_field(origin, shape, v, self.tree, True, 2 * v)
            sparse = ((sd_lab <= 0) & inside).astype(np.uint8)
        return img, label, sparse


def _write_kidney(kid: SyntheticKidney, root: Path, rle_rows: list, solution_rows: list,
                  block: int) -> None:
    spec = kid.spec
    base = root / spec.split / spec.name
    (base / "images").mkdir(parents=True)
    has_labels = spec.split == "train"
    if has_labels:
        (base / "labels").mkdir()
    dense_lo = dense_hi = None
    if spec.dense_range is not None:
        dense_name = spec.name.replace("_sparse", "_dense")
        dense_lo, dense_hi = (int(round(f * kid.shape[0])) for f in spec.dense_range)
        (root / spec.split / dense_name / "labels").mkdir(parents=True)
    Z = kid.shape[0]
    with tqdm(total=Z, desc=f"synthesize {spec.name}", unit="slice") as bar:
        for z0 in range(0, Z, block):
            z1 = min(Z, z0 + block)
            img, full_lab, sparse_lab = kid.block(z0, z1)
            for i, z in enumerate(range(z0, z1)):
                name = f"{z:04d}"
                tifffile.imwrite(base / "images" / f"{name}.tif", img[i])
                if has_labels:
                    tifffile.imwrite(base / "labels" / f"{name}.tif", sparse_lab[i] * np.uint8(255))
                    rle_rows.append((f"{spec.name}_{name}", rle_encode(sparse_lab[i])))
                else:
                    solution_rows.append((f"{spec.name}_{name}", rle_encode(full_lab[i]),
                                          img.shape[2], img.shape[1]))
                if dense_lo is not None and dense_lo <= z < dense_hi:
                    dense_name = spec.name.replace("_sparse", "_dense")
                    tifffile.imwrite(root / spec.split / dense_name / "labels" / f"{name}.tif",
                                     full_lab[i] * np.uint8(255))
                    rle_rows.append((f"{dense_name}_{name}", rle_encode(full_lab[i])))
            bar.update(z1 - z0)


def synthesize(out: Path, seed: int = 0, scale: str = "small", overwrite: bool = False,
               block: int = 32) -> Path:
    """Write synthetic kidneys to ``out`` in the Kaggle layout; returns ``out``.

    Besides the Kaggle files, ``solution.csv`` (id, rle, width, height) holds the hidden test labels
    so that a submission can be scored.
    """
    specs = FULL if scale == "full" else SMALL
    with atomic_dir(Path(out), overwrite) as tmp:
        rle_rows: list = []
        solution_rows: list = []
        for index, spec in enumerate(specs):
            kid = SyntheticKidney(spec, seed, index, full=scale == "full")
            _write_kidney(kid, tmp, rle_rows, solution_rows, block)
        write_csv(tmp / "train_rles.csv", ("id", "rle"), rle_rows)
        write_csv(tmp / "sample_submission.csv", ("id", "rle"), [(r[0], EMPTY_RLE) for r in solution_rows])
        write_csv(tmp / "solution.csv", ("id", "rle", "width", "height"), solution_rows)
    return Path(out)


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``synthesize {competition}``."""
    sub = groups["synthesize"]
    p = sub.add_parser("sennet", help="synthetic HiP-CT-like kidneys in the SenNet Kaggle layout")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (Kaggle layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=("small", "full"), default="small",
                   help="small: 5 kidneys for tests/demo (seconds); full: one kidney of the real "
                        "kidney_1_dense shape 2279x1303x912 (5.4 GB, for benchmarks)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=lambda a: print(f"wrote {synthesize(a.output, a.seed, a.scale, a.overwrite)}"))

