"""``nnunet-vasculature pseudo-label``: densify sparse annotations with confident predictions.

Output: a folder of label slices in the Kaggle convention (0 background, 255 vessel) with, when
``--uncertain`` is given, 128 for voxels the model is unsure about and the annotation does not
cover. ``convert sennet --labels KIDNEY=DIR`` builds a new dataset version from it, where 128 becomes
nnU-Net's ignore label (excluded from the loss).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.io.slices import IGNORE_VALUE, list_slices, read_label_slice
from nnunet_vasculature.io.store import add_foreign_flag
from nnunet_vasculature.io.volumes import SliceStack, open_probabilities


def pseudo_label(prob_path: Path | str, labels_dir: Path, threshold: float, out_dir: Path,
                 uncertain: float | None = None, overwrite: bool = False,
                 foreign_probabilities: bool = False) -> dict:
    prob, _ = open_probabilities(prob_path, foreign_probabilities)
    stack = SliceStack(list_slices(Path(labels_dir)))
    if tuple(prob.shape) != tuple(stack.shape):
        raise UserError(f"{prob_path}: probabilities of shape {tuple(prob.shape)}, labels {labels_dir} "
                        f"{tuple(stack.shape)}")
    if not 0 < threshold <= 1 or (uncertain is not None and not 0 <= uncertain < threshold):
        raise UserError("need 0 < --threshold <= 1 and 0 <= --uncertain < --threshold")
    hi = int(np.ceil(threshold * 255))
    lo = None if uncertain is None else int(np.ceil(uncertain * 255))
    counts = {"annotated": 0, "added": 0, "ignored": 0}
    with atomic_dir(Path(out_dir), overwrite) as tmp:
        for z, f in enumerate(tqdm(stack.files, desc="pseudo-label", unit="slice")):
            lab = read_label_slice(f, stack.plane).astype(bool)
            p = np.asarray(prob[z:z + 1])[0]
            confident = p >= hi
            out = np.where(lab | confident, 255, 0).astype(np.uint8)
            if lo is not None:
                out[(p >= lo) & ~confident & ~lab] = IGNORE_VALUE
                counts["ignored"] += int(((p >= lo) & ~confident & ~lab).sum())
            counts["annotated"] += int(lab.sum())
            counts["added"] += int((confident & ~lab).sum())
            tifffile.imwrite(tmp / f.name, out)
    print(f"annotated {counts['annotated']} voxels, added {counts['added']}, ignored {counts['ignored']} -> {out_dir}")
    return counts


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Registers ``pseudo-label sennet`` (plain ``pseudo-label`` by the default competition word).

    Args:
        groups: the competition sub-parsers of each command (:func:`nnunet_vasculature.competitions.command_groups`).
    """
    p = groups["pseudo-label"].add_parser("sennet", help="union of a kidney's sparse label slices and confident "
                                                         "predictions")
    p.add_argument("-i", dest="input", type=Path, required=True, help="probabilities (zarr array of the kidney)")
    p.add_argument("--labels", type=Path, required=True, help="the kidney's sparse label slices")
    p.add_argument("--threshold", type=float, required=True, help="probability at or above which to add vessel")
    p.add_argument("--uncertain", type=float, help="mark [uncertain, threshold) as ignore (128)")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output label folder")
    p.add_argument("--overwrite", action="store_true")
    add_foreign_flag(p)
    p.set_defaults(func=lambda a: pseudo_label(a.input, a.labels, a.threshold, a.output, a.uncertain, a.overwrite,
                                               a.foreign_probabilities))
