"""Synthetic HiP-CT-like kidneys written in the exact Kaggle layout.

Vessels are branching trees defined in physical units (µm), so a kidney generated at a coarser
voxel size (kidney_6, 63.08 µm) shows the same anatomy with thinner vessels in voxels, like the real
data. Every volume is produced block by block along z: memory is bounded by one block even for the
``--scale full`` kidney of the real kidney_1_dense shape.

Shifted test kidneys (``tests=`` / ``--test_voxel_um`` and ``--acquisition``) replace kidney_5 and kidney_6 by
kidney_5's anatomy rendered at other voxel sizes and with another acquisition (:data:`ACQUISITIONS`: a grey-value
drift, more noise, ring artefacts, a sample filling part of the field), named ``kidney_5_<UM>um[_<PRESET>]``
(``.`` written ``p``: ``kidney_5_63p08um``), names absent from the known-spacing table as a new kidney's would be;
``test_kidneys.json`` (ours, not a Kaggle file) records each one's voxel size and acquisition parameters.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.io.rle import EMPTY_RLE, rle_encode
from nnunet_vasculature.synthetic.common import write_csv
from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field

MEDIUM = 2500.0            # grey value of the mounting medium around the sample (before the kidney's gain)
TEST_KIDNEYS_FILE = "test_kidneys.json"


@dataclass(frozen=True)
class Acquisition:
    """How a test kidney is scanned, on top of its own appearance; the defaults are every kidney's of the download.

    Grey values are of the image before the kidney's own gain/offset unless said otherwise.
    """
    name: str
    description: str
    noise_sd: float = 900.0      # Gaussian noise
    ring_amplitude: float = 0.0  # sd of the grey value of a ring (concentric about the rotation axis, the z axis)
    ring_share: float = 0.0      # share of the one-voxel-wide radii that carry a ring
    field_scale: float = 1.0     # field of view / sample size in y and x (> 1: mounting medium around the sample)
    gamma: float = 1.0           # then, after the kidney's gain/offset: 65535 (value / 65535) ** gamma ...
    gain: float = 1.0            # ... * gain ...
    offset: float = 0.0          # ... + offset, clipped to uint16

    def __post_init__(self) -> None:
        if min(self.noise_sd, self.ring_amplitude, self.ring_share) < 0 or self.field_scale < 1 or \
                self.gamma <= 0 or self.gain <= 0:
            raise UserError(f"acquisition {self.name}: negative noise/rings, field_scale < 1 or gamma/gain <= 0")

    @property
    def grey_drift(self) -> bool:
        """Whether gamma, gain or offset differ from the identity (applied only then: the default stays bitwise)."""
        return (self.gamma, self.gain, self.offset) != (1.0, 1.0, 0.0)


ACQUISITIONS = {a.name: a for a in (
    Acquisition("same", "as the training kidneys"),
    Acquisition("contrast", "another beam/detector setting: grey values drift by gamma, gain and offset",
                gamma=0.8, gain=0.7, offset=6000.0),
    Acquisition("noisy", "a shorter exposure: three times the noise", noise_sd=2700.0),
    Acquisition("rings", "ring artefacts of miscalibrated detector pixels about the rotation axis",
                ring_amplitude=2000.0, ring_share=0.2),
    Acquisition("partial", "the sample fills part of the field: mounting medium around it",
                field_scale=1.6),
)}
SAME = ACQUISITIONS["same"]


@dataclass(frozen=True)
class KidneySpec:
    name: str
    split: str                      # "train" or "test"
    voxel_um: float
    extent_um: tuple[float, float, float]   # physical size (z, y, x)
    missing_fraction: float = 0.0   # share of branches left out of the labels (sparse kidneys)
    dense_range: tuple[float, float] | None = None   # kidney_3_dense: labelled fraction of slices
    acquisition: Acquisition = field(default=SAME)


SMALL = [
    KidneySpec("kidney_1_dense", "train", 50.0, (2400, 4800, 4400)),
    KidneySpec("kidney_2", "train", 50.0, (2200, 4400, 4800), missing_fraction=0.35),
    KidneySpec("kidney_3_sparse", "train", 50.16, (2400, 4800, 4800), missing_fraction=0.15,
               dense_range=(0.25, 0.75)),
    KidneySpec("kidney_5", "test", 50.28, (2000, 4400, 4000)),
    KidneySpec("kidney_6", "test", 63.08, (2200, 4400, 4000)),
]
FULL = [KidneySpec("kidney_1_dense", "train", 50.0, (2279 * 50.0, 1303 * 50.0, 912 * 50.0))]
SHIFTED_ANATOMY = 3        # shifted test kidneys are SMALL[3] (kidney_5) rendered otherwise


class SyntheticKidney:
    """One synthetic kidney, produced block by block along z."""

    def __init__(self, spec: KidneySpec, seed: int, index: int, full: bool):
        self.spec = spec
        self.seed, self.index = seed, index
        own = np.random.default_rng([seed, index, 104729])  # per-kidney appearance
        self.extent = np.array(spec.extent_um, dtype=float)
        acq = spec.acquisition
        # the field of view: the sample's extent, or larger in y and x around it (rotation axis = its centre line)
        self.field = self.extent * np.array([1.0, acq.field_scale, acq.field_scale])
        self.shape = tuple(int(round(e / spec.voxel_um)) for e in self.field)
        ref = 50.0  # radii are given in voxels of a 50 µm reference kidney
        self.tree = grow_tree(np.random.default_rng([seed, index]), self.extent, (12.0 if full else 4.5) * ref,
                              1.0 * ref,
                              12 if full else 4, spec.missing_fraction)
        self.waves = [(own.normal(size=3) * 2 * np.pi / own.uniform(400, 1600), own.uniform(0, 2 * np.pi),
                       own.uniform(600, 1500)) for _ in range(4)]
        self.gain = own.uniform(0.8, 1.2)
        self.offset = own.uniform(-2000, 3000)
        self.rings = None
        if acq.ring_amplitude > 0 and acq.ring_share > 0:
            ring_rng = np.random.default_rng([seed, index, 7919])
            n = int(np.hypot(*self.shape[1:])) + 2
            self.rings = np.where(ring_rng.random(n) < acq.ring_share, ring_rng.normal(0, acq.ring_amplitude, n),
                                  0.0).astype(np.float32)

    def block(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (uint16), full label and sparse label (uint8 0/1) for slices [z0, z1)."""
        v = self.spec.voxel_um
        acq = self.spec.acquisition
        shape = (z1 - z0, self.shape[1], self.shape[2])
        origin = np.array([z0 * v, 0.0, 0.0]) - (self.field - self.extent) / 2   # in the sample's frame
        coords = [origin[k] + (np.arange(shape[k]) + 0.5) * v for k in range(3)]
        zz, yy, xx = np.meshgrid(*coords, indexing="ij", sparse=True)
        c = self.extent / 2
        inside = ((zz - c[0]) / (0.47 * self.extent[0])) ** 2 + ((yy - c[1]) / (0.47 * self.extent[1])) ** 2 \
            + ((xx - c[2]) / (0.47 * self.extent[2])) ** 2 <= 1.0
        sd_all = segment_field(origin, shape, v, self.tree, False, 2 * v)
        texture = np.zeros(shape, dtype=np.float32)
        for k, phase, amp in self.waves:
            texture += (amp * np.cos(k[0] * zz + k[1] * yy + k[2] * xx + phase)).astype(np.float32)
        noise = np.random.default_rng([self.seed, self.index, z0]).normal(0, acq.noise_sd, size=shape) \
            .astype(np.float32)
        vessel_signal = 7000.0 / (1.0 + np.exp(np.clip(sd_all / (0.6 * v), -30, 30)))
        img = np.where(inside, 14000.0 + texture + vessel_signal, MEDIUM)
        if self.rings is not None:
            radius = (np.hypot(yy - c[1], xx - c[2]) / v).astype(int)     # voxels from the rotation axis
            img = img + self.rings[radius]
        img = img + noise
        img = img * self.gain + self.offset
        if acq.grey_drift:
            img = 65535.0 * (np.clip(img, 0, 65535) / 65535.0) ** acq.gamma * acq.gain + acq.offset
        img = np.clip(img, 0, 65535).astype(np.uint16)
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


def shifted_name(voxel_um: float, acquisition: str) -> str:
    """Name of kidney_5's anatomy at ``voxel_um`` with ``acquisition``: ``kidney_5_63p08um``, ``kidney_5_50um_noisy``.

    Args:
        voxel_um: voxel size in µm.
        acquisition: a name of :data:`ACQUISITIONS` (``same``: no suffix).

    Returns:
        The kidney's folder name (no ``.``, which nnU-Net case file names cannot hold).
    """
    suffix = "" if acquisition == SAME.name else f"_{acquisition}"
    return f"{SMALL[SHIFTED_ANATOMY].name}_{voxel_um:g}um{suffix}".replace(".", "p")


def shifted_tests(tests: Sequence[tuple[float, str]]) -> list[KidneySpec]:
    """The test kidneys of ``(voxel_um, acquisition)`` pairs: kidney_5's anatomy and extent at each.

    Args:
        tests: voxel size (µm, finite, > 0) and acquisition name of each test kidney.

    Returns:
        One spec per pair, in the given order.

    Raises:
        UserError: a voxel size that is not a positive number, an unknown acquisition, or a kidney asked twice.
    """
    base, out = SMALL[SHIFTED_ANATOMY], []
    for voxel_um, acquisition in tests:
        if not math.isfinite(voxel_um) or voxel_um <= 0:
            raise UserError(f"--test_voxel_um {voxel_um:g}: the voxel size must be a positive number of micrometres")
        if acquisition not in ACQUISITIONS:
            raise UserError(f"--acquisition {acquisition}: unknown preset; choose from {', '.join(ACQUISITIONS)}")
        name = shifted_name(voxel_um, acquisition)
        if any(s.name == name for s in out):
            raise UserError(f"test kidney {name} asked twice")
        out.append(KidneySpec(name, "test", float(voxel_um), base.extent_um, acquisition=ACQUISITIONS[acquisition]))
    return out


def shifted_record(kid: SyntheticKidney) -> dict:
    """What ``test_kidneys.json`` says of one test kidney.

    Args:
        kid: a shifted test kidney.

    Returns:
        Its voxel size, acquisition name, description and parameters, anatomy and shape.
    """
    acq = asdict(kid.spec.acquisition)
    return {"voxel_um": kid.spec.voxel_um, "acquisition": acq.pop("name"), "description": acq.pop("description"),
            "parameters": acq, "anatomy": SMALL[SHIFTED_ANATOMY].name, "shape_zyx": list(kid.shape)}


def synthesize(out: Path, seed: int = 0, scale: str = "small", overwrite: bool = False,
               block: int = 32, tests: Sequence[tuple[float, str]] | None = None) -> Path:
    """Write synthetic kidneys to ``out`` in the Kaggle layout; returns ``out``.

    Besides the Kaggle files, ``solution.csv`` (id, rle, width, height) holds the hidden test labels
    so that a submission can be scored.

    Args:
        out: the folder to write (refused if it exists, unless ``overwrite``).
        seed: the random seed of every kidney.
        scale: ``small`` (three training and two test kidneys) or ``full`` (one kidney of the real kidney_1_dense
            shape).
        overwrite: replace ``out``.
        block: slices generated at a time.
        tests: ``(voxel_um, acquisition)`` of each test kidney, in place of kidney_5 and kidney_6 (None: those
            two); they are kidney_5's anatomy, named by :func:`shifted_name`, and ``test_kidneys.json`` records
            them. The training kidneys are the same either way. Only with ``scale="small"``.

    Returns:
        ``out``.
    """
    if scale not in ("small", "full"):
        raise UserError(f"--scale {scale}: choose small or full")
    if tests is not None and scale != "small":
        raise UserError("--test_voxel_um / --acquisition: only with --scale small")
    if scale == "full":
        kidneys = [(0, FULL[0])]
    elif tests is None:
        kidneys = list(enumerate(SMALL))
    else:
        kidneys = [(i, s) for i, s in enumerate(SMALL) if s.split == "train"] + \
            [(SHIFTED_ANATOMY, s) for s in shifted_tests(tests)]
    with atomic_dir(Path(out), overwrite) as tmp:
        rle_rows: list = []
        solution_rows: list = []
        records = {}
        for index, spec in kidneys:
            kid = SyntheticKidney(spec, seed, index, full=scale == "full")
            _write_kidney(kid, tmp, rle_rows, solution_rows, block)
            if tests is not None and spec.split == "test":
                records[spec.name] = shifted_record(kid)
        write_csv(tmp / "train_rles.csv", ("id", "rle"), rle_rows)
        write_csv(tmp / "sample_submission.csv", ("id", "rle"), [(r[0], EMPTY_RLE) for r in solution_rows])
        write_csv(tmp / "solution.csv", ("id", "rle", "width", "height"), solution_rows)
        if tests is not None:
            (tmp / TEST_KIDNEYS_FILE).write_text(json.dumps(
                {"description": "synthetic test kidneys: kidney_5's anatomy at these voxel sizes and acquisitions "
                                "(written by nnunet-vasculature synthesize sennet; not a Kaggle file)",
                 "seed": seed, "kidneys": records}, indent=1))
    return Path(out)


def read_test_kidneys(folder: Path) -> dict[str, dict]:
    """The ``kidneys`` record of a synthesized folder's ``test_kidneys.json``.

    Args:
        folder: a folder ``synthesize(..., tests=...)`` wrote.

    Returns:
        Kidney name -> its record (``voxel_um``, ``acquisition``, ``parameters``, ...).

    Raises:
        UserError: no such file, or not one of ours.
    """
    path = Path(folder) / TEST_KIDNEYS_FILE
    try:
        return dict(json.loads(path.read_text())["kidneys"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a test kidney record of synthesize sennet ({type(e).__name__}: {e})") from None


def acquisition_table() -> str:
    """The presets of :data:`ACQUISITIONS` and their parameters.

    Returns:
        A header line and one line per preset (``synthesize sennet --list_acquisitions``).
    """
    keys = [k for k in asdict(SAME) if k not in ("name", "description")]
    rows = [["preset", *keys, "what it is"]] + [[a.name, *(f"{getattr(a, k):g}" for k in keys), a.description]
                                                 for a in ACQUISITIONS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]) for r in rows)


def _run(a: argparse.Namespace) -> None:
    if a.list_acquisitions:
        print(acquisition_table())
        return
    if a.output is None:
        raise UserError("synthesize sennet: give the output folder with -o DIR")
    tests = None
    if a.test_voxel_um or a.acquisition:
        tests = [(v, p) for v in (a.test_voxel_um or [50.0]) for p in (a.acquisition or [SAME.name])]
    out = synthesize(a.output, a.seed, a.scale, a.overwrite, tests=tests)
    print(f"wrote {out}")
    if tests is not None:
        print(f"test kidneys {', '.join(read_test_kidneys(out))}: their voxel sizes are in {out / TEST_KIDNEYS_FILE}"
              f" (unknown names: give convert --spacing KIDNEY=UM and predict --spacing UM)")


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``synthesize {competition}``."""
    sub = groups["synthesize"]
    p = sub.add_parser("sennet", help="synthetic HiP-CT-like kidneys in the SenNet Kaggle layout")
    p.add_argument("-o", "--output", type=Path, help="output folder (Kaggle layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=("small", "full"), default="small",
                   help="small: 5 kidneys for tests/demo (seconds); full: one kidney of the real "
                        "kidney_1_dense shape 2279x1303x912 (5.4 GB, for benchmarks)")
    p.add_argument("--test_voxel_um", type=float, nargs="+", metavar="UM",
                   help="test kidneys at these voxel sizes (µm), each with every --acquisition, in place of "
                        "kidney_5 (50.28) and kidney_6 (63.08): kidney_5's anatomy (vessels defined in µm), named "
                        "kidney_5_<UM>um[_<PRESET>], recorded in test_kidneys.json (default with --acquisition: 50)")
    p.add_argument("--acquisition", nargs="+", choices=list(ACQUISITIONS), metavar="PRESET",
                   help=f"how the test kidneys are scanned: {', '.join(ACQUISITIONS)} (see --list_acquisitions; "
                        "default with --test_voxel_um: same)")
    p.add_argument("--list_acquisitions", action="store_true", help="print the presets' parameters and exit")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run)
