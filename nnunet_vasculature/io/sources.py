"""Input volumes for prediction, read a few slices at a time: a Kaggle kidney folder of TIFF slices,
an nnU-Net raw image (3D TIFF + spacing JSON, NIfTI/MHA), or the z-chunks of one kidney written by
``convert sennet`` (read as one volume, so the kidney is predicted without seams).

:class:`VolumeSource` is what every reader hands to prediction (readers of other formats, e.g. the Human
Organ Atlas ones, build one too). What a VolumeSource provides:

- ``name``: the kidney's name (the store's array name; ``slice_ids`` start with it);
- ``shape``: (z, y, x) voxels; ``spacing``: voxel size (z, y, x) in the dataset's units (µm);
- ``slice_ids``: one Kaggle id per z-plane (``kidney_5_0000``, ...);
- ``parts``: ``[(z0, z1, reader)]`` covering [0, z) in order, ``reader(a, b)`` giving planes [z0 + a, z0 + b)
  as an (n, y, x) array; :meth:`VolumeSource.read` (planes [z0, z1) as float32) is built on them;
- ``intensity``: the intensity mapping applied at conversion (:mod:`nnunet_vasculature.io.intensity`), or None;
- ``files``: the files the volume is read from (for :func:`fingerprint`: an interrupted prediction is resumed
  only on the same input). A source without files (in memory, remote) is fingerprinted by the content of its
  first, middle and last planes instead.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tifffile

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.paths import CASES_FILE
from nnunet_vasculature.io.sennet import KNOWN_SPACING_UM, slice_id
from nnunet_vasculature.io.slices import list_slices
from nnunet_vasculature.io.volumes import SliceStack


@dataclass
class VolumeSource:
    """A (z, y, x) volume with spacing in the units of the dataset (µm for SenNet)."""
    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    slice_ids: list[str]
    parts: list = field(default_factory=list)     # [(z0, z1, reader)] covering the volume in order
    intensity: dict | None = None                 # set when the values read are intensity-mapped (io.intensity)
    files: list[Path] = field(default_factory=list)     # the files read (for the fingerprint)

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes [z0, z1) as float32 (n, y, x)."""
        out = []
        for a, b, reader in self.parts:
            lo, hi = max(a, z0), min(b, z1)
            if lo < hi:
                out.append(np.asarray(reader(lo - a, hi - a), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, *self.shape[1:]), np.float32)


def _tiff3d_reader(path: Path):
    """z-range reader of a 3D TIFF: memory-mapped when uncompressed, page by page otherwise."""
    try:
        mm = tifffile.memmap(path, mode="r")
        return mm.shape, lambda a, b: mm[a:b]
    except Exception:
        pass
    try:
        tf = tifffile.TiffFile(path)
        pages = tf.pages
        shape = (len(pages), *pages[0].shape)
    except Exception as e:
        raise UserError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None
    return shape, lambda a, b: np.stack([pages[i].asarray() for i in range(a, b)])


def kaggle_kidney(folder: Path, spacing: float | None = None) -> VolumeSource:
    folder = Path(folder)
    images = folder / "images" if (folder / "images").is_dir() else folder
    stack = SliceStack(list_slices(images))
    name = folder.parent.name if images == folder and folder.name == "images" else folder.name
    sp = spacing or KNOWN_SPACING_UM.get(name)
    if sp is None:
        raise UserError(f"{folder}: unknown voxel size for '{name}'; pass --spacing UM")
    ids = [slice_id(name, n) for n in stack.slice_names]
    return VolumeSource(name, stack.shape, (sp, sp, sp), ids, [(0, stack.shape[0], lambda a, b: stack[a:b])],
                        files=list(stack.files))


def raw_image(path: Path, spacing: float | None = None) -> VolumeSource:
    """One nnU-Net raw image (``case_0000.tif`` + ``case.json``, or NIfTI/MHA)."""
    path = Path(path)
    name = re.sub(r"_0000$", "", path.name.split(".")[0])
    if path.suffix.lower() in (".tif", ".tiff"):
        shape, reader = _tiff3d_reader(path)
        if len(shape) != 3:
            raise UserError(f"{path}: expected a 3D TIFF, got shape {shape}")
        aux = path.with_name(f"{name}.json")
        sp = tuple(json.loads(aux.read_text())["spacing"]) if aux.is_file() else None
        if sp is None:
            if spacing is None:
                raise UserError(f"{path}: no {aux.name} with the spacing; pass --spacing")
            sp = (spacing,) * 3
    else:
        import SimpleITK as sitk
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise UserError(f"{path}: cannot read image ({str(e).splitlines()[0]})") from None
        arr = sitk.GetArrayFromImage(img)
        shape, reader, sp = arr.shape, (lambda a, b: arr[a:b]), tuple(img.GetSpacing()[::-1])
    ids = [slice_id(name, f"{i:04d}") for i in range(shape[0])]
    aux = path.with_name(f"{name}.json")
    return VolumeSource(name, tuple(shape), tuple(float(s) for s in sp), ids, [(0, shape[0], reader)],
                        _case_intensity(path.parent.parent / CASES_FILE, name),
                        [path, aux] if aux.is_file() else [path])


def _case_intensity(meta_file: Path, case: str) -> dict | None:
    """The intensity mapping ``convert sennet`` applied to the kidney of ``case``, if any."""
    if not meta_file.is_file():
        return None
    for k in json.loads(meta_file.read_text())["kidneys"].values():
        if any(c["case"] == case for c in k["cases"]):
            return k.get("intensity")
    return None


def chunked_kidneys(images_dir: Path) -> list[VolumeSource]:
    """Kidneys of a converted dataset's imagesTr/imagesTs, each read across its z-chunks."""
    meta_file = images_dir.parent / CASES_FILE
    if not meta_file.is_file():
        return [raw_image(p) for p in sorted(images_dir.glob("*_0000.*"))]
    meta = json.loads(meta_file.read_text())
    out = []
    for kidney, k in meta["kidneys"].items():
        files = [images_dir / f"{c['case']}_0000.tif" for c in k["cases"]]
        if not all(f.is_file() for f in files):
            continue
        parts, ids, z = [], [], 0
        plane = None
        for c, f in zip(k["cases"], files):
            shape, reader = _tiff3d_reader(f)
            if plane is not None and shape[1:] != plane:
                raise UserError(f"{f}: slice size {shape[1:]} differs from the kidney's other chunks {plane}")
            plane = shape[1:]
            parts.append((z, z + shape[0], reader))
            ids.extend(slice_id(kidney, s) for s in c["slice_ids"])
            z += shape[0]
        if _has_gaps(k["cases"]):
            print(f"note: {kidney} has slices left out of its cases (e.g. kept by another volume); "
                  f"predicting its {z} converted slices as one volume")
        sp = float(k["spacing_um"])
        out.append(VolumeSource(kidney, (z, *plane), (sp, sp, sp), ids, parts, k.get("intensity"), files))
    if not out:
        raise UserError(f"{images_dir}: no images of the kidneys listed in {meta_file}")
    return out


def _has_gaps(cases: list[dict]) -> bool:
    return any(a["z1"] != b["z0"] for a, b in zip(cases, cases[1:]))


def open_inputs(path: Path | str, spacing: float | None = None, level: int | str = "auto",
                target_spacing_um: float | Sequence[float] | None = None, remote: bool = False,
                log: Callable[[str], None] | None = print) -> list[VolumeSource]:
    """Every volume to predict in ``path``.

    Args:
        path: a Kaggle kidney folder (or test/ folder), an nnU-Net raw image, an imagesTs/imagesTr folder, or
            a multiscale input of :func:`nnunet_vasculature.io.volume_open.open_volume` (``hoa:NAME``, an
            OME-Zarr image, an N5 multiscale folder, a folder of JPEG 2000 slices).
        spacing: voxel size (µm) when the input does not say.
        level: the pyramid level of a multiscale input (``"auto"``: nearest ``target_spacing_um``).
        target_spacing_um: the model's voxel size (z, y, x) in µm, for ``level="auto"``.
        remote: allow an ``hoa:`` dataset to be read over the network.
        log: where a multiscale input's line saying which level was chosen goes (None: nowhere).

    Returns:
        The volumes (a multiscale input: one :class:`~nnunet_vasculature.io.pyramid.PyramidVolume`).
    """
    from nnunet_vasculature.io.volume_open import is_volume_spec, open_volume
    if remote and not str(path).startswith("hoa:"):
        raise UserError(f"--remote: only hoa:NAME inputs are read over the network, not {path}")
    if is_volume_spec(path):
        return [open_volume(path, level, target_spacing_um, remote=remote, spacing_um=spacing, log=log)]
    if str(level).strip().lower() != "auto":
        raise UserError(f"--level {level}: {path} is not a multiscale input (OME-Zarr, N5, hoa:NAME, JPEG 2000)")
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    if path.is_file():
        return [raw_image(path, spacing)]
    if (path / "images").is_dir() or any(re.match(r"^\d+\.tiff?$", p.name) for p in path.iterdir()):
        return [kaggle_kidney(path, spacing)]
    if any(p.name.endswith(("_0000.tif", "_0000.nii.gz", "_0000.mha")) for p in path.iterdir()):
        return chunked_kidneys(path)
    kids = [d for d in sorted(path.iterdir()) if (d / "images").is_dir()]
    if kids:   # a Kaggle test/ folder
        return [kaggle_kidney(d, spacing) for d in kids]
    raise UserError(f"{path}: no kidney slices, nnU-Net images or kidney folders inside")


def fingerprint(src: VolumeSource) -> dict:
    """What identifies the input of a prediction, recorded in the probability store.

    Args:
        src: the input volume.

    Returns:
        ``{"files": count, "bytes": total size, "sha256": hash}``: the hash covers the shape and every file's
        name, size and modification time (ns), or, for a source without files, the content of its first,
        middle and last planes.
    """
    digest = hashlib.sha256(json.dumps([list(src.shape), list(src.slice_ids[:1])]).encode())
    total = 0
    for f in src.files:
        try:
            st = Path(f).stat()
        except OSError as e:
            raise UserError(f"{f}: cannot read ({e.strerror})") from None
        total += st.st_size
        digest.update(f"{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if not src.files and src.shape[0]:
        for z in sorted({0, src.shape[0] // 2, src.shape[0] - 1}):
            digest.update(np.ascontiguousarray(src.read(z, z + 1)).tobytes())
    return {"files": len(src.files), "bytes": total, "sha256": digest.hexdigest()}
