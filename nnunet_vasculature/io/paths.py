"""nnU-Net's folder variables (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) as nnU-Net
reads them (``nnunetv2.paths``, 2.8.x), and the file names this package keeps beside nnU-Net's."""
from __future__ import annotations

from os.path import join
from pathlib import Path

from nnunet_vasculature.errors import UserError

CASES_FILE = "sennet_cases.json"      # in a converted raw dataset: which z-chunk case is which kidney part


def nnunet_folder(variable: str, alternative: str = "") -> Path:
    """The folder named by nnU-Net's variable ``variable``; a one-line error when it is not set.

    ``alternative`` completes the message with the flag that replaces the variable (e.g. "pass -o").
    """
    from nnunetv2 import paths
    value = getattr(paths, variable)
    value = value.get() if hasattr(value, "get") else value     # nnunetv2 >= 2.8: _EnvPath, else str/None
    if not value:
        hint = f" (or {alternative})" if alternative else ""
        raise UserError(f"{variable} is not set: export {variable}=/path/to/{variable}{hint}; see nnU-Net's "
                        f"documentation/setting_up_paths.md")
    return Path(value)


def find_raw_dataset(dataset_id: int, raw_root: Path | None = None) -> Path:
    """``$nnUNet_raw/DatasetXXX_*`` (or under ``raw_root``) of a dataset ID."""
    root = Path(raw_root) if raw_root else nnunet_folder("nnUNet_raw")
    hits = sorted(root.glob(f"Dataset{int(dataset_id):03d}_*"))
    hits = [h for h in hits if h.is_dir()]
    if not hits:
        raise UserError(f"{root}: no Dataset{int(dataset_id):03d}_* folder")
    return hits[0]


def pretrained_path(preprocessed_dataset_folder: str, plans_name: str, configuration: str) -> str:
    """Where ``import-pretrained`` writes the converted weights and the transfer trainers look."""
    return join(preprocessed_dataset_folder, f"{plans_name}__{configuration}__pretrained.pth")


__all__ = ["CASES_FILE", "nnunet_folder", "find_raw_dataset", "pretrained_path"]
