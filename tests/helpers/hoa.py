"""Independent writers of Human Organ Atlas-layout test stores (never this package's code): the HOA N5 layout
and HOA's OME-Zarr 0.4 (x, y, z storage, translation before scale) by tensorstore / zarr directly from the
documented facts (DOMAIN.md section 9), and NGFF 0.5 in nanometres by zarr."""
import json
from pathlib import Path

import numpy as np
import tensorstore as ts
import zarr

BLOSC_N5 = {"type": "blosc", "cname": "zstd", "clevel": 9, "shuffle": 2, "blocksize": 0}
HOA_BUCKET_PATH = "DONOR-1/kidney-right/{um}um_complete-organ_bm05"
TEST_NAME = "DONOR-1_kidney_right_complete-organ_{um}um_bm05"


def mean2(volume):
    """2x2x2 mean of a volume with even sides (independent of the package)."""
    z, y, x = volume.shape
    return volume.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5)).astype(volume.dtype)


def write_hoa_n5(folder: Path, levels, resolution_um, block=(128, 128, 128), dtype="uint16", axes=("x", "y", "z")):
    """The HOA N5 layout: root attributes (axes x,y,z, downsamplingFactors, resolution, units um),
    levels s0.. with dimensions listed x, y, z, blosc zstd clevel 9 shuffle 2, written by tensorstore.

    ``resolution_um``: one voxel size, or (x, y, z) sizes; ``axes``: another storage order (fastest first) for
    the blocks, ``dimensions``, ``axes`` and ``resolution`` alike (the atlas writes x, y, z)."""
    resolution_xyz = list(resolution_um) if isinstance(resolution_um, (list, tuple)) else [resolution_um] * 3
    order = ["zyx".index(a) for a in reversed(axes)]        # numpy (z, y, x) -> slowest-first storage order
    for index, level in enumerate(levels):
        stored = np.asarray(level, dtype=dtype).transpose(order).transpose(2, 1, 0)   # N5 lists the fastest first
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(folder / f"s{index}")},
                         "metadata": {"dimensions": list(stored.shape), "blockSize": list(block), "dataType": dtype,
                                      "compression": BLOSC_N5}, "create": True}).result()
        store.write(stored).result()
        attrs_file = folder / f"s{index}" / "attributes.json"
        attrs_file.write_text(json.dumps({**json.loads(attrs_file.read_text()), "axes": list(axes)}))
    (folder / "attributes.json").write_text(json.dumps({
        "axes": list(axes), "downsamplingFactors": [[2 ** i] * 3 for i in range(len(levels))],
        "multiScale": True, "n5": "2.0.0", "resolution": [resolution_xyz["xyz".index(a)] for a in axes],
        "units": ["um", "um", "um"]}))
    return folder


def write_hoa_omezarr04(folder: Path, levels, spacing_um: float, chunk=128):
    """HOA's OME-Zarr: NGFF 0.4 on zarr format 2, levels "0".., arrays stored (x, y, z) with axes listed so,
    chunks 128^3, blosc zstd clevel 8 shuffle 1, '<u2', '/' separator, translation [0.5]*3 before scale."""
    from numcodecs import Blosc
    group = zarr.open_group(str(folder), mode="w", zarr_format=2)
    datasets = []
    for index, level in enumerate(levels):
        xyz = np.asarray(level, dtype="<u2").transpose(2, 1, 0)
        arr = group.create_array(str(index), shape=xyz.shape, chunks=tuple(min(chunk, s) for s in xyz.shape),
                                 dtype="<u2", compressors=Blosc(cname="zstd", clevel=8, shuffle=1),
                                 chunk_key_encoding={"name": "v2", "separator": "/"})
        arr[:] = xyz
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "translation", "translation": [0.5, 0.5, 0.5]},
            {"type": "scale", "scale": [spacing_um * 2 ** index] * 3}]})
    group.attrs["multiscales"] = [{"version": "0.4", "name": folder.name.split(".")[0], "datasets": datasets,
                                   "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "xyz"]}]
    return folder


def write_omezarr05(folder: Path, levels, spacing_nm: float, dtype="uint16"):
    """NGFF 0.5 on zarr format 3, axes z, y, x in nanometres, scale then translation."""
    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    datasets = []
    for index, level in enumerate(levels):
        arr = group.create_array(str(index), shape=level.shape, chunks=(8, 16, 16), dtype=dtype,
                                 dimension_names=["z", "y", "x"])
        arr[:] = level
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "scale", "scale": [spacing_nm * 2 ** index] * 3},
            {"type": "translation", "translation": [100.0 * index] * 3}]})
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": "v05", "datasets": datasets, "axes": [
        {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]}]}
    return folder
