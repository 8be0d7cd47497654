"""Cross-validation folds shared by every competition's converter: leave one group out (a physical
kidney, a patient, a source WSI or a sub-dataset), written as nnU-Net's ``splits_final.json``."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nnunet_vasculature.io.paths import find_raw_dataset, nnunet_folder


def leave_one_group_out(groups: dict[str, list[str]]) -> list[dict]:
    """One fold per group (ascending group order): the group's cases validate, all others train.

    Args:
        groups: group name -> case names.

    Returns:
        nnU-Net's splits list ``[{"train": [...], "val": [...]}, ...]``; ``[]`` with fewer than 2 groups.
    """
    if len(groups) < 2:
        return []
    return [{"train": sorted(c for g, cases in groups.items() if g != held_out for c in cases),
             "val": sorted(groups[held_out])} for held_out in sorted(groups)]


def install_splits(raw_dataset: Path, required: bool = False) -> Path | None:
    """Copy the dataset's ``splits_final.json`` to where nnU-Net reads it (nnUNet_preprocessed).

    Without ``nnUNet_preprocessed`` a hint is printed, or, when ``required``, a UserError raised."""
    from nnunet_vasculature.errors import UserError, atomic_file
    src = raw_dataset / "splits_final.json"
    try:
        splits = json.loads(src.read_text())
    except FileNotFoundError:
        raise UserError(f"{src}: missing (convert the dataset with this tool, or write nnU-Net's splits)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{src}: not a readable splits file ({type(e).__name__}: {e})") from None
    if not isinstance(splits, list) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in splits):
        raise UserError(f"{src}: not nnU-Net's splits (a list of {{'train': [...], 'val': [...]}})")
    if not splits:
        print("only one group of training cases: no cross-validation splits (train with fold 'all')")
        return None
    pre = nnunet_folder("nnUNet_preprocessed") if required else os.environ.get("nnUNet_preprocessed")
    if not pre:
        print(f"nnUNet_preprocessed is not set: copy {src} to $nnUNet_preprocessed/{raw_dataset.name}/ "
              f"(or run 'nnunet-vasculature splits -d ID' once it is set)")
        return None
    dst = Path(pre) / raw_dataset.name / "splits_final.json"
    with atomic_file(dst) as tmp:
        tmp.write_text(json.dumps(splits, indent=1))
    print(f"wrote {dst} ({len(splits)} folds)")
    return dst


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``splits -d ID``: install a converted dataset's folds in nnUNet_preprocessed."""
    s = sub.add_parser("splits", help="install a converted dataset's splits_final.json in nnUNet_preprocessed")
    s.add_argument("-d", dest="dataset_id", type=int, required=True)
    s.set_defaults(func=lambda a: install_splits(find_raw_dataset(a.dataset_id), required=True))
