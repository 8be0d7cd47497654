"""Facts of the SenNet + HOA Kaggle layout shared by every stage: voxel sizes, slice ids, case names.
Generic readers (:mod:`.pyramid` and the multiscale formats) never import them: the opener of an input
(:mod:`.input_spec`) and the SenNet readers (:mod:`.sennet_inputs`) give a volume its ids.

- A slice id is ``<kidney>_<slice file stem>``, e.g. ``kidney_5_0000`` (``sample_submission.csv``).
- A converted z-chunk case is ``<kidney>_z<first slice number, 4 digits>``, e.g. ``kidney_1_dense_z0127``.
"""
from __future__ import annotations

import re

# µm per voxel, from the competition's data description (DOMAIN.md section 1)
KNOWN_SPACING_UM = {
    "kidney_1_dense": 50.0,
    "kidney_1_voi": 5.2,
    "kidney_2": 50.0,
    "kidney_3_sparse": 50.16,
    "kidney_3_dense": 50.16,
    "kidney_5": 50.28,
    "kidney_6": 63.08,
}
DEFAULT_TRAIN = ("kidney_1_dense", "kidney_2", "kidney_3_sparse", "kidney_3_dense")


def slice_id(kidney: str, slice_name: str) -> str:
    """Kaggle id of one slice: ``slice_id("kidney_5", "0000") == "kidney_5_0000"``."""
    return f"{kidney}_{slice_name}"


def numbered_slice_ids(kidney: str, depth: int) -> list[str]:
    """Kaggle ids of the planes of a volume without slice files (an nnU-Net image, a multiscale input).

    Args:
        kidney: the volume's name.
        depth: the number of planes.

    Returns:
        ``[kidney_0000, kidney_0001, ...]`` (four digits at least).
    """
    return [slice_id(kidney, f"{z:04d}") for z in range(depth)]


def split_slice_id(sid: str) -> tuple[str, str]:
    """``"kidney_5_0000" -> ("kidney_5", "0000")``: the slice name is the digits after the last ``_``.

    Raises ValueError for an id of another form."""
    kidney, _, name = sid.rpartition("_")
    if not kidney or not name.isdigit():
        raise ValueError(f"id '{sid}' is not <kidney>_<slice number>")
    return kidney, name


def case_name(kidney: str, first_slice: int) -> str:
    """nnU-Net case name of the z-chunk of ``kidney`` starting at slice number ``first_slice``."""
    return f"{kidney}_z{int(first_slice):04d}"


def physical_kidney(name: str) -> str:
    """``kidney_3_dense`` and ``kidney_3_sparse`` are one kidney: folds must not split them."""
    m = re.match(r"(kidney_\d+)", name)
    return m.group(1) if m else name


__all__ = ["KNOWN_SPACING_UM", "DEFAULT_TRAIN", "slice_id", "numbered_slice_ids", "split_slice_id", "case_name",
           "physical_kidney"]
