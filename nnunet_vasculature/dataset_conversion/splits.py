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


def prediction_input(raw_dataset: Path, fold: int, out: Path, with_test: bool = True,
                     overwrite: bool = False) -> list[str]:
    """A folder for stock ``nnUNetv2_predict -i``: the images of fold ``fold``'s validation cases (and of the
    test cases, ``imagesTs``), every channel file, hard-linked where the file system allows, else copied.

    Args:
        raw_dataset: the converted dataset (``imagesTr``, ``splits_final.json``).
        fold: the fold whose held-out cases to predict.
        out: the folder to write (refused if it exists, unless ``overwrite``).
        with_test: also the test cases.
        overwrite: replace ``out``.

    Returns:
        The case names written.
    """
    import shutil

    from nnunet_vasculature.errors import UserError, atomic_dir
    splits_file = raw_dataset / "splits_final.json"
    try:
        splits = json.loads(splits_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{splits_file}: not a readable splits file ({type(e).__name__})") from None
    if not 0 <= fold < len(splits):
        raise UserError(f"{splits_file}: no fold {fold} (it has {len(splits)})")
    wanted = {("imagesTr", c) for c in splits[fold]["val"]}
    files = []
    for folder, case in sorted(wanted):
        found = sorted((raw_dataset / folder).glob(f"{case}_[0-9][0-9][0-9][0-9].*"))
        if not found:
            raise UserError(f"{raw_dataset / folder}: no image of validation case {case}")
        files += found
    if with_test and (raw_dataset / "imagesTs").is_dir():
        files += sorted(p for p in (raw_dataset / "imagesTs").iterdir() if p.is_file())
    with atomic_dir(out, overwrite) as tmp:
        for f in files:
            try:
                (tmp / f.name).hardlink_to(f)
            except OSError:
                shutil.copyfile(f, tmp / f.name)
    cases = sorted({f.name.rsplit("_", 1)[0] for f in files})
    print(f"wrote {out}: {len(cases)} cases ({len(wanted)} of fold {fold}'s validation"
          + (f", {len(cases) - len(wanted)} test" if with_test else "") + ")")
    return cases


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``splits -d ID [-f F --predict_input DIR]``: install a converted dataset's folds in nnUNet_preprocessed, or
    write the input folder of a fold's held-out (and the test) cases for stock ``nnUNetv2_predict``."""
    s = sub.add_parser("splits", help="install a converted dataset's splits_final.json in nnUNet_preprocessed; "
                                      "with --predict_input, gather a fold's held-out and the test images for "
                                      "nnUNetv2_predict")
    s.add_argument("-d", dest="dataset_id", type=int, required=True)
    s.add_argument("-f", dest="fold", type=int, default=0, help="the fold for --predict_input (default 0)")
    s.add_argument("--predict_input", type=Path, metavar="DIR",
                   help="write DIR: fold -f's validation images and imagesTs (hard links or copies)")
    s.add_argument("--no_test", action="store_true", help="with --predict_input: leave out imagesTs")
    s.add_argument("--overwrite", action="store_true")

    def run(a: argparse.Namespace) -> None:
        raw = find_raw_dataset(a.dataset_id)
        if a.predict_input:
            prediction_input(raw, a.fold, a.predict_input, not a.no_test, a.overwrite)
        else:
            install_splits(raw, required=True)
    s.set_defaults(func=run)
