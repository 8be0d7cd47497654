"""The SenNet side's prediction inputs, read a few slices at a time: a Kaggle kidney folder of TIFF slices,
an nnU-Net raw image (3D TIFF + spacing JSON, NIfTI/MHA), or the z-chunks of one kidney written by
``convert sennet`` (read as one volume, so the kidney is predicted without seams). Each is a
:class:`~nnunet_vasculature.io.volume_source.VolumeSource` whose planes carry their Kaggle slice ids
(:mod:`nnunet_vasculature.io.sennet`).

Which of them an ``-i`` value is, is decided once by :func:`nnunet_vasculature.io.input_spec.parse_input`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import tifffile

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.paths import CASES_FILE
from nnunet_vasculature.io.sennet import KNOWN_SPACING_UM, numbered_slice_ids, slice_id
from nnunet_vasculature.io.slices import list_slices
from nnunet_vasculature.io.volume_source import ASSUMED, GIVEN, KNOWN_NAME, METADATA, VolumeSource
from nnunet_vasculature.io.volumes import SliceStack

RAW_IMAGE_SUFFIXES = ("_0000.tif", "_0000.nii.gz", "_0000.mha")     # channel 0 of an nnU-Net raw image


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


def kaggle_kidney_name(folder: Path) -> str:
    """The kidney's name of a Kaggle kidney folder (``.../kidney_5`` or ``.../kidney_5/images``).

    Args:
        folder: the kidney folder or its ``images`` folder.

    Returns:
        the name.
    """
    folder = Path(folder)
    return folder.parent.name if folder.name == "images" and not (folder / "images").is_dir() else folder.name


def raw_image_name(path: Path) -> str:
    """The case name of an nnU-Net raw image (``case_0000.tif`` -> ``case``).

    Args:
        path: the image file.

    Returns:
        the name.
    """
    return re.sub(r"_0000$", "", Path(path).name.split(".")[0])


def kaggle_kidney(folder: Path, spacing: float | None = None) -> VolumeSource:
    """One Kaggle kidney folder (``images/`` of ``0000.tif``, ..., or the slices themselves).

    Args:
        folder: the kidney folder (or its ``images`` folder).
        spacing: voxel size (µm); default: the competition's for a known kidney name.

    Returns:
        the volume, one Kaggle id per slice file.
    """
    folder = Path(folder)
    images = folder / "images" if (folder / "images").is_dir() else folder
    stack = SliceStack(list_slices(images))
    name = kaggle_kidney_name(folder)
    sp = spacing or KNOWN_SPACING_UM.get(name)
    if sp is None:
        raise UserError(f"{folder}: unknown voxel size for '{name}'; pass --spacing UM (or --spacing {name}=UM)")
    ids = [slice_id(name, n) for n in stack.slice_names]
    return VolumeSource(name, stack.shape, (sp, sp, sp), ids, [(0, stack.shape[0], lambda a, b: stack[a:b])],
                        files=list(stack.files), spacing_source=GIVEN if spacing else KNOWN_NAME)


def raw_image(path: Path, spacing: float | None = None) -> VolumeSource:
    """One nnU-Net raw image (``case_0000.tif`` + ``case.json``, or NIfTI/MHA).

    Args:
        path: the image file.
        spacing: voxel size (µm) of a TIFF without its JSON.

    Returns:
        the volume (ids ``case_0000``, ``case_0001``, ...; the conversion's intensity mapping, if any).
    """
    path = Path(path)
    name = raw_image_name(path)
    source = METADATA
    if path.suffix.lower() in (".tif", ".tiff"):
        shape, reader = _tiff3d_reader(path)
        if len(shape) != 3:
            raise UserError(f"{path}: expected a 3D TIFF, got shape {shape}")
        aux = path.with_name(f"{name}.json")
        sp = tuple(json.loads(aux.read_text())["spacing"]) if aux.is_file() else None
        if sp is None:
            if spacing is None:
                raise UserError(f"{path}: no {aux.name} with the spacing; pass --spacing")
            sp, source = (spacing,) * 3, GIVEN
    else:
        import SimpleITK as sitk
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise UserError(f"{path}: cannot read image ({str(e).splitlines()[0]})") from None
        arr = sitk.GetArrayFromImage(img)
        shape, reader, sp = arr.shape, (lambda a, b: arr[a:b]), tuple(img.GetSpacing()[::-1])
        if all(s == 1.0 for s in sp):       # the header's default: nothing said the voxel size
            sp, source = ((spacing,) * 3, GIVEN) if spacing is not None else (sp, ASSUMED)
    aux = path.with_name(f"{name}.json")
    return VolumeSource(name, tuple(shape), tuple(float(s) for s in sp), numbered_slice_ids(name, shape[0]),
                        [(0, shape[0], reader)], _case_intensity(path.parent.parent / CASES_FILE, name),
                        [path, aux] if aux.is_file() else [path], spacing_source=source)


def _case_intensity(meta_file: Path, case: str) -> dict | None:
    """The intensity mapping ``convert sennet`` applied to the kidney of ``case``, if any."""
    if not meta_file.is_file():
        return None
    for k in json.loads(meta_file.read_text())["kidneys"].values():
        if any(c["case"] == case for c in k["cases"]):
            return k.get("intensity")
    return None


def chunked_kidneys(images_dir: Path) -> list[VolumeSource]:
    """Kidneys of a converted dataset's imagesTr/imagesTs, each read across its z-chunks.

    Args:
        images_dir: the images folder.

    Returns:
        one volume per kidney listed in the dataset's cases file whose chunks are all there (without the
        cases file: one volume per raw image).
    """
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
        out.append(VolumeSource(kidney, (z, *plane), (sp, sp, sp), ids, parts, k.get("intensity"), files,
                                spacing_source=METADATA))
    if not out:
        raise UserError(f"{images_dir}: no images of the kidneys listed in {meta_file}")
    return out


def _has_gaps(cases: list[dict]) -> bool:
    return any(a["z1"] != b["z0"] for a, b in zip(cases, cases[1:]))


__all__ = ["RAW_IMAGE_SUFFIXES", "kaggle_kidney_name", "raw_image_name", "kaggle_kidney", "raw_image",
           "chunked_kidneys"]
