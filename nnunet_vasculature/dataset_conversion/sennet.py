"""SenNet + HOA (Kaggle ``blood-vessel-segmentation``) → nnU-Net v2 raw dataset.

Whole kidneys are cut along z into sub-volume cases (``<kidney>_z<first slice>``) so that nnU-Net's
float32 fingerprinting/preprocessing of one case stays within a few GB; slices are streamed, at most
two chunks are held in memory. The cut is recorded in ``sennet_cases.json`` so predictions can be
stitched back per kidney. Images are written as uncompressed 3D TIFF read by nnU-Net's ``Tiff3DIO``
(spacing in a ``<case>.json`` next to each file, in µm).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.dataset_conversion.splits import install_splits, leave_one_group_out
from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.io import intensity
from nnunet_vasculature.io.paths import CASES_FILE, nnunet_folder
from nnunet_vasculature.io.sennet import DEFAULT_TRAIN, KNOWN_SPACING_UM, case_name, physical_kidney
from nnunet_vasculature.io.slices import label_classes, list_slices, read_slice

VOXELS_PER_CASE = 160_000_000   # ~3 GB in nnU-Net's preprocessing at ~20 bytes/voxel


@dataclass
class KidneySource:
    name: str
    split: str
    spacing_um: float
    images: list[Path]            # one file per slice, sorted
    labels: list[Path] | None     # same length as images, or None (test)
    shape: tuple[int, int] = (0, 0)
    dtypes: tuple[np.dtype, np.dtype | None] = (np.dtype(np.uint16), None)   # the images' and the labels'
    keep: list[bool] = field(default_factory=list)   # slices to convert
    pseudo: bool = False          # labels from a pseudo-label folder (may hold the ignore value)


def discover(kaggle_dir: Path) -> dict[str, tuple[str, Path]]:
    """Volumes present in a Kaggle download: name -> (split, folder)."""
    found = {}
    for split in ("train", "test"):
        d = kaggle_dir / split
        if d.is_dir():
            for k in sorted(p for p in d.iterdir() if p.is_dir()):
                found[k.name] = (split, k)
    if not found:
        raise UserError(f"{kaggle_dir}: no train/ or test/ kidney folders (is this the Kaggle download?)")
    return found


def _slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a slice from its TIFF header, without reading the pixels."""
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            return tuple(page.shape), np.dtype(page.dtype)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for corrupt files
        raise UserError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None


def _check_headers(images: list[Path], labels: list[Path],
                   pool: ThreadPoolExecutor) -> tuple[tuple[int, int], tuple[np.dtype, np.dtype | None]]:
    """One slice size for images and labels, one dtype among the images and one among the labels: a uint8
    or float slice among uint16 ones would convert into a black or rescaled slice. Returns the size and the
    images' and labels' dtypes (None without labels); the first bad file in slice order is the error."""
    shape, _ = _slice_header(images[0])
    if len(shape) != 2:
        raise UserError(f"{images[0]}: expected a 2D slice, got shape {shape}")
    dtypes = []
    for files in (images, labels):
        dtype = None
        for f, (s, d) in zip(files, pool.map(_slice_header, files)):
            if s != shape:
                raise UserError(f"{f}: slice is {'x'.join(map(str, s))}, other slices are {shape[0]}x{shape[1]}")
            if dtype is None:
                dtype = d
            elif d != dtype:
                raise UserError(f"{f}: slice of type {d}, the other slices of its folder are {dtype}")
        dtypes.append(dtype)
    return shape, (dtypes[0], dtypes[1])


def load_sources(kaggle_dir: Path, kidneys: list[str] | None, spacing: dict[str, float],
                 label_dirs: dict[str, Path] | None = None) -> list[KidneySource]:
    """Find and validate the selected kidneys (file lists, sizes, image/label pairing).

    ``label_dirs`` replaces a kidney's labels (e.g. by a ``pseudo-label`` folder).
    """
    found = discover(kaggle_dir)
    label_dirs = label_dirs or {}
    unknown = [k for k in label_dirs if k not in found]
    if unknown:
        raise UserError(f"--labels {unknown[0]}=...: unknown kidney (found: {', '.join(found)})")
    if kidneys is None:
        kidneys = [k for k in DEFAULT_TRAIN if k in found] + [k for k, (s, _) in found.items() if s == "test"]
    sources = []
    for name in kidneys:
        if name not in found:
            raise UserError(f"{kaggle_dir}: unknown kidney '{name}' (found: {', '.join(found)})")
        split, folder = found[name]
        sp = spacing.get(name, KNOWN_SPACING_UM.get(name))
        if sp is None:
            raise UserError(f"{folder}: no known voxel size for '{name}'; pass --spacing {name}=UM")
        labels = None
        if (folder / "images").is_dir():
            images = list_slices(folder / "images")
        elif name.endswith("_dense") and (folder.parent / name.replace("_dense", "_sparse") / "images").is_dir():
            # kidney_3_dense ships labels only; its images are kidney_3_sparse's, same file names
            img_dir = folder.parent / name.replace("_dense", "_sparse") / "images"
            by_name = {p.name: p for p in list_slices(img_dir)}
            lab = list_slices(folder / "labels")
            missing = [p.name for p in lab if p.name not in by_name]
            if missing:
                raise UserError(f"{folder / 'labels' / missing[0]}: no image of that name in {img_dir}")
            images = [by_name[p.name] for p in lab]
            labels = lab
        else:
            raise UserError(f"{folder}: no images/ folder")
        if split == "train" and (labels is None or name in label_dirs):
            lab_dir = Path(label_dirs.get(name, folder / "labels"))
            if not lab_dir.is_dir():
                raise UserError(f"{lab_dir}: training kidney without labels folder")
            labels = list_slices(lab_dir)
            if len(labels) != len(images):
                raise UserError(f"{lab_dir}: {len(images)} images but {len(labels)} labels (the images: "
                                f"{folder / 'images'})")
            for a, b in zip(images, labels):
                if a.name != b.name:
                    raise UserError(f"{b}: label has no image of the same name ({a.name} expected)")
        src = KidneySource(name, split, float(sp), images, labels, pseudo=name in label_dirs)
        with ThreadPoolExecutor(4) as pool:
            src.shape, src.dtypes = _check_headers(images, labels or [], pool)
        src.keep = [True] * len(images)
        sources.append(src)
    by_name = {s.name: s for s in sources}
    # dense labels take precedence: drop the overlapping slices from the sparse volume
    for s in sources:
        if s.name.endswith("_sparse") and s.name.replace("_sparse", "_dense") in by_name:
            dense_names = {p.name for p in by_name[s.name.replace("_sparse", "_dense")].images}
            s.keep = [p.name not in dense_names for p in s.images]
    return sources


def plan_chunks(keep: list[bool], max_slices: int) -> list[tuple[int, int]]:
    """Cut each unbroken run of kept slices into near-equal chunks of at most ``max_slices``."""
    runs, start = [], None
    for i, k in enumerate(keep + [False]):
        if k and start is None:
            start = i
        elif not k and start is not None:
            runs.append((start, i))
            start = None
    chunks = []
    for a, b in runs:
        n = -(-(b - a) // max_slices)
        edges = np.linspace(a, b, n + 1).round().astype(int)
        chunks.extend(zip(edges[:-1].tolist(), edges[1:].tolist()))
    return chunks


class _ChunkBuffers:
    """Two reusable (images, labels) buffers of a kidney's longest chunk: one is written out while the next chunk
    is read into the other, and no chunk allocates (fresh gigabytes cost page faults under the page cache's
    pressure of the writes: np.stack of new arrays took most of the converter's time)."""

    def __init__(self, src: KidneySource, slices: int):
        self.src, self.slot = src, 0
        self.images = [np.empty((slices, *src.shape), src.dtypes[0]) for _ in range(2)]
        self.labels = [np.empty((slices, *src.shape), np.uint8) for _ in range(2)] if src.labels else None

    def read(self, a: int, b: int, pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray | None]:
        """Slices [a, b) of the kidney into the next buffer pair (the labels validated, as classes)."""
        src, k = self.src, self.slot
        self.slot = 1 - k
        img = self.images[k][:b - a]
        list(pool.map(lambda i: read_slice(src.images[a + i], src.shape, out=img[i]), range(b - a)))
        if src.labels is None:
            return img, None
        lab = self.labels[k][:b - a]

        def one_label(i: int) -> None:
            path = src.labels[a + i]
            raw = read_slice(path, src.shape, out=lab[i] if src.dtypes[1] == np.uint8 else None)
            label_classes(raw, path, src.pseudo, out=lab[i])

        list(pool.map(one_label, range(b - a)))
        return img, lab


def convert_sennet(kaggle_dir: Path, dataset_id: int, name: str = "SenNet", raw_root: Path | None = None,
                   kidneys: list[str] | None = None, chunk_slices: int | None = None,
                   spacing: dict[str, float] | None = None, overwrite: bool = False,
                   label_dirs: dict[str, Path] | None = None,
                   percentile_norm: intensity.PercentileMapping | None = None) -> Path:
    """Convert a Kaggle download into ``<raw_root>/DatasetXXX_<name>``; returns that folder.

    ``percentile_norm``: map each kidney's images by its own intensity percentiles
    (:mod:`nnunet_vasculature.io.intensity`), recorded for ``predict`` in dataset.json."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    kaggle_dir = Path(kaggle_dir)
    raw_root = Path(raw_root) if raw_root else nnunet_folder("nnUNet_raw", "pass -o RAW_ROOT")
    ds_name = f"Dataset{dataset_id:03d}_{name}"
    clash = [p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != ds_name and p.is_dir()]
    if clash:
        raise UserError(f"{clash[0]}: dataset ID {dataset_id} is already used by another name")
    sources = load_sources(kaggle_dir, kidneys, spacing or {}, label_dirs)
    meta: dict = {"source": str(kaggle_dir.resolve()), "kidneys": {}}
    n_train = 0
    has_ignore = False
    with atomic_dir(raw_root / ds_name, overwrite) as tmp, ThreadPoolExecutor(4) as pool, \
            ThreadPoolExecutor(1) as writer:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        pending = []
        for src in sources:
            per_case = chunk_slices or max(16, VOXELS_PER_CASE // (src.shape[0] * src.shape[1]))
            chunks = plan_chunks(src.keep, per_case)
            sp = [src.spacing_um] * 3
            cases = []
            img_dir = tmp / ("imagesTr" if src.split == "train" else "imagesTs")
            mapped = None
            if percentile_norm is not None:
                lo, hi = intensity.volume_percentiles(lambda z: read_slice(src.images[z], src.shape),
                                                      len(src.images), src.shape, percentile_norm)
                mapped = {"mapping": percentile_norm.to_json(), "low": lo, "high": hi}
            buffers = _ChunkBuffers(src, max((b - a for a, b in chunks), default=0))
            with tqdm(total=sum(b - a for a, b in chunks), desc=f"convert {src.name}", unit="slice") as bar:
                for a, b in chunks:
                    case = case_name(src.name, int(src.images[a].stem))
                    # the write before the last one used this buffer pair: it has finished (see below)
                    img, lab = buffers.read(a, b, pool)
                    if mapped is not None:
                        img = intensity.apply(img, mapped["low"], mapped["high"])
                    has_ignore |= lab is not None and src.pseudo and bool((lab == 2).any())
                    # write in the background while the next chunk is read; at most one pending, so the buffer
                    # pair read next is never the one being written
                    for f in pending:
                        f.result()
                    pending = [writer.submit(_write_case, img_dir, tmp / "labelsTr", case, img, lab, sp)]
                    cases.append({"case": case, "z0": a, "z1": b,
                                  "slice_ids": [p.stem for p in src.images[a:b]]})
                    n_train += src.split == "train"
                    bar.update(b - a)
            meta["kidneys"][src.name] = {
                "split": src.split, "spacing_um": src.spacing_um, "physical_kidney": physical_kidney(src.name),
                "shape": [len(src.images), *src.shape], "cases": cases,
                **({"intensity": mapped} if mapped else {})}
        for f in pending:
            f.result()
        generate_dataset_json(
            str(tmp), channel_names={0: "HiP-CT"},
            labels={"background": 0, "vessel": 1, **({"ignore": 2} if has_ignore else {})},
            num_training_cases=n_train, file_ending=".tif", overwrite_image_reader_writer="Tiff3DIO",
            dataset_name=ds_name, description="SenNet + HOA HiP-CT kidney vessels (spacing in µm)",
            reference="https://www.kaggle.com/competitions/blood-vessel-segmentation",
            license="see the competition rules", converted_by="nnunet-vasculature",
            **({intensity.KEY: percentile_norm.to_json()} if percentile_norm else {}))
        (tmp / CASES_FILE).write_text(json.dumps(meta, indent=1))
        (tmp / "splits_final.json").write_text(json.dumps(make_splits(meta), indent=1))
    final = raw_root / ds_name
    print(f"wrote {final} ({n_train} training cases)")
    install_splits(final)
    return final


def _write_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write(path)``, a failure a one-line UserError naming ``path``: a full disk says so (numpy's and
    tifffile's short writes say only "N requested and M written")."""
    try:
        write(path)
    except OSError as e:
        full = e.errno == errno.ENOSPC or "requested and" in str(e)
        raise UserError(f"{path}: cannot write: " + ("no space left on the device" if full else
                                                     f"{e.strerror or e}")) from None


def _write_case(img_dir: Path, lab_dir: Path, case: str, img: np.ndarray, lab: np.ndarray | None,
                spacing: list[float]) -> None:
    sidecar = json.dumps({"spacing": spacing})
    for folder, name, volume in ((img_dir, f"{case}_0000", img), (lab_dir, case, lab)):
        if volume is not None:
            _write_file(folder / f"{name}.tif", lambda path, v=volume: tifffile.imwrite(path, v))
            _write_file(folder / f"{case}.json", lambda path: path.write_text(sidecar))


def make_splits(meta: dict) -> list[dict]:
    """Leave-one-kidney-out folds over physical kidneys (kidney_3_dense goes with kidney_3_sparse)."""
    groups: dict[str, list[str]] = {}
    for k in meta["kidneys"].values():
        if k["split"] == "train":
            groups.setdefault(k["physical_kidney"], []).extend(c["case"] for c in k["cases"])
    return leave_one_group_out(groups)


def _parse_spacing(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items or []:
        k, _, v = it.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            raise UserError(f"--spacing {it}: expected KIDNEY=UM, e.g. kidney_6=63.08") from None
        if not math.isfinite(out[k]) or out[k] <= 0:
            raise UserError(f"--spacing {it}: the voxel size must be a positive number of micrometres")
    return out


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """``convert {competition}``."""
    sub = groups["convert"]
    p = sub.add_parser("sennet", help="SenNet + HOA 3D HiP-CT kidneys -> nnU-Net raw (3D)")
    p.add_argument("kaggle_dir", nargs="?", type=Path, help="Kaggle download folder (or use -i)")
    p.add_argument("-i", dest="input", type=Path, help="Kaggle download folder")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset ID, e.g. 501")
    p.add_argument("-n", dest="name", default="SenNet", help="dataset name (default SenNet)")
    p.add_argument("-o", dest="raw_root", type=Path, help="nnU-Net raw root (default $nnUNet_raw)")
    p.add_argument("--kidneys", nargs="+", help=f"volumes to convert (default: {' '.join(DEFAULT_TRAIN)} "
                                                 "and every test kidney)")
    p.add_argument("--chunk_slices", type=int, default=None,
                   help=f"max slices per case (default: about {VOXELS_PER_CASE // 1_000_000} M voxels per case)")
    p.add_argument("--spacing", nargs="+", metavar="KIDNEY=UM", help="override the voxel size of a kidney")
    p.add_argument("--labels", nargs="+", metavar="KIDNEY=DIR", dest="label_dirs",
                   help="take a kidney's labels from DIR (e.g. a pseudo-label folder; 128 = ignore)")
    p.add_argument("--percentile_norm", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="map each kidney's intensities by its own LOW/HIGH percentiles (e.g. 10 99.8, SenNet's "
                        "4th place); predict applies the same to each input kidney")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")

    def run(a: argparse.Namespace) -> None:
        src = a.input or a.kaggle_dir
        if src is None:
            raise UserError("give the Kaggle folder: convert sennet KAGGLE_DIR -d ID")
        if a.chunk_slices is not None and a.chunk_slices < 1:
            raise UserError("--chunk_slices must be at least 1")
        label_dirs = {}
        for it in a.label_dirs or []:
            k, _, d = it.partition("=")
            if not d:
                raise UserError(f"--labels {it}: expected KIDNEY=DIR")
            label_dirs[k] = Path(d)
        convert_sennet(src, a.dataset_id, a.name, a.raw_root, a.kidneys, a.chunk_slices,
                       _parse_spacing(a.spacing), a.overwrite, label_dirs,
                       intensity.PercentileMapping(*a.percentile_norm) if a.percentile_norm else None)

    p.set_defaults(func=run)
