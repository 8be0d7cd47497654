"""``nnunet-vasculature hoa-store -o DIR``: a synthetic kidney written as a local Human Organ Atlas mirror, so
that ``predict -i hoa:NAME`` can be tried without network and without downloading a scan.

``DIR`` is laid out like the HOA bucket (``$NNUNET_VASCULATURE_HOA_MIRROR``, :mod:`nnunet_vasculature.io.hoa`):

- ``DIR/<donor>/kidney-right/<um>um_complete-organ_bm05/``: an N5 multiscale folder as the atlas writes it
  (root ``attributes.json`` with ``axes`` ``["x", "y", "z"]``, ``downsamplingFactors``, ``resolution``,
  ``units``; levels ``s0``, ``s1``, ... with ``dimensions`` and ``blockSize`` listed x, y, z, blosc zstd);
- ``DIR/<donor>/kidney-left/<um>um_complete-organ_bm18.ome.zarr/``: an OME-Zarr 0.4 image as the atlas writes
  it (zarr format 2, levels ``0``, ``1``, ... stored (x, y, z) with their axes listed so, ``/`` chunk keys,
  ``translation`` [0.5]*3 listed before ``scale``);
- ``DIR/metadata/<name>.json``: each dataset's catalogue entry in hoa-tools' own schema (a copy of a real
  kidney's entry, renamed and pointed at the synthetic bucket), which ``hoa:NAME`` finds in the mirror and
  hoa-tools reads with ``change_metadata_directory(DIR / "metadata")``.

The voxels are the synthetic kidneys of ``synthesize sennet`` (:class:`~nnunet_vasculature.synthetic.sennet.
SyntheticKidney`: kidney_5's anatomy for the right kidney, kidney_6's for the left) rendered at ``voxel_um``
(default 25 µm: level 1 is the 50 µm of the Kaggle kidneys and of the demo's model), block by block along z;
each level is the 2x2x2 mean of the one above (sizes halved, rounded down). The stores are written with
tensorstore (N5) and zarr (OME-Zarr), not with this package's readers' code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_vasculature.errors import UserError, atomic_dir

DONOR = "SYNTHETIC-01"
BUCKET = "hoa-synthetic"
TEMPLATE = "LADAF-2021-17_kidney_right_complete-organ_25.0um_bm05"     # the real entry the catalogue copies
BLOSC_N5 = {"type": "blosc", "cname": "zstd", "clevel": 9, "shuffle": 2, "blocksize": 0}
KIDNEYS = (("right", "n5", "bm05", 3), ("left", "zarr", "bm18", 4))       # side, format, beamline, SMALL index


def dataset_name(side: str, voxel_um: float, beamline: str) -> str:
    """The HOA name of a synthetic kidney, e.g. ``SYNTHETIC-01_kidney_right_complete-organ_25.0um_bm05``.

    Args:
        side: ``right`` or ``left``.
        voxel_um: level 0's voxel size.
        beamline: ``bm05`` or ``bm18``.

    Returns:
        the name.
    """
    return f"{DONOR}_kidney_{side}_complete-organ_{float(voxel_um)}um_{beamline}"


def bucket_path(side: str, voxel_um: float, beamline: str, fmt: str) -> str:
    """The store's path inside the bucket (and the mirror), as the atlas names its folders.

    Args:
        side: ``right`` or ``left``.
        voxel_um: level 0's voxel size.
        beamline: ``bm05`` or ``bm18``.
        fmt: ``n5`` or ``zarr``.

    Returns:
        ``<donor>/kidney-<side>/<um>um_complete-organ_<beamline>`` (``.ome.zarr`` for OME-Zarr).
    """
    return f"{DONOR}/kidney-{side}/{float(voxel_um)}um_complete-organ_{beamline}" + (".ome.zarr" if fmt == "zarr"
                                                                                       else "")


def _mean2(block: np.ndarray) -> np.ndarray:
    """2x2x2 mean of a (z, y, x) block, odd edges dropped."""
    z, y, x = (s // 2 * 2 for s in block.shape)
    b = block[:z, :y, :x].astype(np.float32)
    return np.rint(b.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))).astype(block.dtype)


def _level_shapes(shape: tuple[int, int, int], levels: int) -> list[tuple[int, int, int]]:
    shapes = [tuple(shape)]
    for _ in range(levels - 1):
        shapes.append(tuple(s // 2 for s in shapes[-1]))
    if min(shapes[-1]) < 1:
        raise UserError(f"--levels {levels}: level {levels - 1} would be empty for a kidney of {shape} voxels")
    return shapes


def _n5_levels(folder: Path, shapes: list, chunk: int) -> list[Any]:
    import tensorstore as ts
    arrays = []
    for index, (z, y, x) in enumerate(shapes):
        arrays.append(ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(folder / f"s{index}")},
                               "metadata": {"dimensions": [x, y, z], "blockSize": [chunk] * 3, "dataType": "uint16",
                                            "compression": BLOSC_N5}, "create": True}).result())
        attrs = folder / f"s{index}" / "attributes.json"
        attrs.write_text(json.dumps({**json.loads(attrs.read_text()), "axes": ["x", "y", "z"],
                                     "downsamplingFactors": [2 ** index] * 3}))
    return [lambda z0, block, a=a: a[:, :, z0:z0 + block.shape[0]].write(block.transpose(2, 1, 0)).result()
            for a in arrays]


def _n5_root(folder: Path, levels: int, voxel_um: float) -> None:
    (folder / "attributes.json").write_text(json.dumps({
        "axes": ["x", "y", "z"], "downsamplingFactors": [[2 ** i] * 3 for i in range(levels)], "multiScale": True,
        "n5": "2.0.0", "resolution": [float(voxel_um)] * 3, "units": ["um", "um", "um"]}))


def _zarr_levels(folder: Path, shapes: list, chunk: int, voxel_um: float, name: str) -> list[Any]:
    import zarr
    from numcodecs import Blosc
    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    arrays, datasets = [], []
    for index, (z, y, x) in enumerate(shapes):
        arrays.append(group.create_array(str(index), shape=(x, y, z), chunks=(chunk,) * 3, dtype="<u2",
                                         compressors=Blosc(cname="zstd", clevel=8, shuffle=1), fill_value=0,
                                         chunk_key_encoding={"name": "v2", "separator": "/"}))
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "translation", "translation": [0.5, 0.5, 0.5]},
            {"type": "scale", "scale": [float(voxel_um) * 2 ** index] * 3}]})
    group.attrs["multiscales"] = [{"version": "0.4", "name": name, "datasets": datasets,
                                   "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "xyz"]}]

    def writer(array: Any) -> Any:
        def write(z0: int, block: np.ndarray) -> None:
            array[:, :, z0:z0 + block.shape[0]] = block.transpose(2, 1, 0)
        return write
    return [writer(a) for a in arrays]


def _catalogue_entry(name: str, side: str, voxel_um: float, fmt: str, path: str, shape: tuple) -> dict:
    from hoa_tools.dataset import Dataset, get_dataset
    entry = get_dataset(TEMPLATE).model_dump(mode="json")
    entry["name"] = name
    entry["data"] = {**entry["data"], "shape": [int(shape[2]), int(shape[1]), int(shape[0])],
                     "voxel_size_um": float(voxel_um), "gcs_url": f"{fmt}://gs://{BUCKET}/{path}/"}
    entry["donor"] = {**entry["donor"], "id": DONOR}
    entry["sample"] = {**entry["sample"], "organ_context": side}
    entry["registration"] = None
    entry["citation"] = {**entry["citation"], "doi": "synthetic (nnunet-vasculature hoa-store)",
                         "title": f"Synthetic kidney ({side}) at {float(voxel_um)}um written by nnunet-vasculature "
                                  f"hoa-store; not a scan"}
    Dataset.model_validate(entry)          # hoa-tools' own schema
    return entry


def write_hoa_store(out: Path, voxel_um: float = 25.0, levels: int = 3, chunk: int = 64, seed: int = 0,
                    overwrite: bool = False) -> list[str]:
    """Write the synthetic HOA mirror ``out`` (see the module's description).

    Args:
        out: the mirror's root (``$NNUNET_VASCULATURE_HOA_MIRROR``).
        voxel_um: level 0's voxel size (µm).
        levels: pyramid levels (each half the previous one's size).
        chunk: chunk / block side (voxels).
        seed: the synthetic kidneys' seed.
        overwrite: replace an existing ``out``.

    Returns:
        the dataset names written (``hoa:NAME`` inputs).
    """
    try:
        import hoa_tools.dataset  # noqa: F401
    except ImportError:
        from nnunet_vasculature.io.hoa import INSTALL_HINT
        raise UserError(f"hoa-store writes hoa-tools catalogue entries: {INSTALL_HINT}") from None
    from nnunet_vasculature.synthetic.sennet import SMALL, SyntheticKidney
    if not 1 <= levels <= 8 or chunk < 8 or not 1.0 <= voxel_um <= 200.0:
        raise UserError(f"--levels {levels} (1..8), --chunk {chunk} (at least 8), --voxel_um {voxel_um:g} "
                        f"(1..200): out of range")
    names = []
    with atomic_dir(Path(out), overwrite) as tmp:
        (tmp / "metadata").mkdir()
        for side, fmt, beamline, anatomy in KIDNEYS:
            name, path = dataset_name(side, voxel_um, beamline), bucket_path(side, voxel_um, beamline, fmt)
            kidney = SyntheticKidney(dataclasses.replace(SMALL[anatomy], voxel_um=float(voxel_um)), seed, anatomy,
                                     False)
            shapes = _level_shapes(kidney.shape, levels)
            store = tmp / path
            store.parent.mkdir(parents=True, exist_ok=True)
            writers = _n5_levels(store, shapes, chunk) if fmt == "n5" else \
                _zarr_levels(store, shapes, chunk, voxel_um, name)
            slab = chunk * 2 ** (levels - 1)           # whole chunk rows at every level
            for z0 in range(0, shapes[0][0], slab):
                block = kidney.block(z0, min(shapes[0][0], z0 + slab))[0]
                for index, write in enumerate(writers):
                    write(z0 >> index, block[:shapes[index][0] - (z0 >> index)])
                    block = _mean2(block)
            if fmt == "n5":
                _n5_root(store, levels, voxel_um)
            entry = _catalogue_entry(name, side, voxel_um, fmt, path, shapes[0])
            (tmp / "metadata" / f"{name}.json").write_text(json.dumps(entry, indent=2))
            names.append(name)
            print(f"hoa:{name}: {'N5' if fmt == 'n5' else 'OME-Zarr 0.4'}, {levels} levels, level 0 "
                  f"{shapes[0]} (z, y, x) at {float(voxel_um):g} µm -> {Path(out) / path}")
    return names


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hoa-store``.

    Args:
        sub: the CLI's sub-command parsers.
    """
    p = sub.add_parser("hoa-store", help="write synthetic kidneys as a local Human Organ Atlas mirror (N5 and "
                                         "OME-Zarr pyramids, catalogue entries) to try predict -i hoa:NAME offline",
                       description="Write two synthetic kidneys as a local Human Organ Atlas mirror: an N5 and an "
                                   "OME-Zarr 0.4 pyramid in the bucket's folder layout, with their hoa-tools "
                                   "catalogue entries in DIR/metadata. Then export "
                                   "NNUNET_VASCULATURE_HOA_MIRROR=DIR and predict -i hoa:NAME (no network).")
    p.add_argument("-o", dest="output", type=Path, required=True, help="the mirror folder to write")
    p.add_argument("--voxel_um", type=float, default=25.0, help="level 0's voxel size in µm (default 25: level 1 "
                                                                "is 50 µm, the Kaggle kidneys')")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    p.add_argument("--chunk", type=int, default=64, help="chunk side in voxels (default 64; the atlas uses 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace DIR")

    def run(a: argparse.Namespace) -> None:
        names = write_hoa_store(a.output, a.voxel_um, a.levels, a.chunk, a.seed, a.overwrite)
        print(f"export NNUNET_VASCULATURE_HOA_MIRROR={Path(a.output).resolve()}")
        for name in names:
            print(f"nnunet-vasculature predict -i hoa:{name} -m MODEL_FOLDER --dry_run")

    p.set_defaults(func=run)


__all__ = ["DONOR", "BUCKET", "dataset_name", "bucket_path", "write_hoa_store", "add_parser"]
