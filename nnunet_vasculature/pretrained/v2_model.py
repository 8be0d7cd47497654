"""Read nnU-Net v2 models: an export zip (``nnUNetv2_export_model_to_zip``, e.g. TotalSegmentator's
``Dataset008_HepaticVessel.zip``), an nnU-Net results dataset folder or one model folder.

Layout: ``[DatasetXXX_Name/]TRAINER__PLANS__CONFIGURATION/{plans.json, dataset.json,
fold_F/checkpoint_*.pth}``. Members are read in place through :class:`~.archive.ModelFiles` (traversal
and zip-bomb checks); checkpoints with the package's one weights-only reader (:mod:`nnunet_vasculature.io.checkpoint`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.checkpoint import read_weights_only
from nnunet_vasculature.pretrained.archive import MAX_MEMBER_BYTES, MAX_SMALL_FILE_BYTES, ModelFiles

V2_MODEL_RE = re.compile(r"(?:^|/)(?:(?P<dataset>Dataset\d+_[^/]+)/)?(?P<trainer>[^/_][^/]*?)__(?P<plans>[^/]+?)__"
                         r"(?P<config>[^/]+)/fold_(?P<fold>\d+|all)/(?P<checkpoint>checkpoint_[^/]+\.pth)$")


@dataclass
class V2Model:
    """One fold of an nnU-Net v2 model, read."""
    source: Path
    dataset: str                 # DatasetXXX_Name (from the layout, else from plans.json)
    trainer: str
    plans_identifier: str
    configuration: str
    fold: str
    checkpoint: str              # file name, e.g. checkpoint_final.pth
    plans: dict
    dataset_json: dict
    network_weights: dict
    trainer_name: str            # as recorded in the checkpoint


@dataclass(frozen=True)
class _Found:
    dataset: str
    trainer: str
    plans: str
    config: str
    folder: str                  # member prefix of the model folder, ending in "/"


def find_v2_models(files: ModelFiles) -> dict[_Found, dict[str, list[str]]]:
    """Every v2 model folder in ``files``: model -> {fold: [checkpoint file names]}."""
    found: dict[_Found, dict[str, list[str]]] = {}
    for name in files.names:
        m = V2_MODEL_RE.search(name.replace("\\", "/"))
        if not m:
            continue
        folder = name[:m.end("config")] + "/"
        key = _Found(m.group("dataset") or "", m.group("trainer"), m.group("plans"), m.group("config"), folder)
        found.setdefault(key, {}).setdefault(m.group("fold"), []).append(m.group("checkpoint"))
    return found


def _choices(models: list[_Found]) -> str:
    return ", ".join(sorted({(f"{m.dataset}/" if m.dataset else "") + f"{m.trainer}__{m.plans}" for m in models}))


def select_v2_model(files: ModelFiles, found: dict[_Found, dict[str, list[str]]], configuration: str,
                    trainer: str | None, plans: str | None, fold: str,
                    checkpoint: str) -> tuple[_Found, str]:
    """The one model folder and checkpoint member that ``-c -tr -p -f -chk`` name (one line otherwise).

    Args:
        files: the source's files.
        found: :func:`find_v2_models` of them.
        configuration: ``-c``.
        trainer: ``-tr`` (None: the only one inside).
        plans: ``-p`` (None: the only one inside).
        fold: ``-f``.
        checkpoint: ``-chk``.

    Returns:
        The model folder and the member name of the checkpoint.
    """
    models = [m for m in found if (trainer is None or m.trainer == trainer) and (plans is None or m.plans == plans)]
    if not models:
        asked = " ".join(f"{flag} {v}" for flag, v in (("-tr", trainer), ("-p", plans)) if v)
        hint = "; -p chooses the source's plans, -tp names the plans written" if plans else ""
        raise UserError(f"{files.path}: no model for {asked} (has: {_choices(list(found))}){hint}")
    if len({(m.dataset, m.trainer, m.plans) for m in models}) > 1:
        datasets = {m.dataset for m in models}
        what = "datasets" if len(datasets) > 1 else "trainers/plans"
        raise UserError(f"{files.path}: several {what} inside; choose with -tr TRAINER -p PLANS "
                        f"(has: {_choices(models)})")
    by_config = {m.config: m for m in models}
    if configuration not in by_config:
        raise UserError(f"{files.path}: no '{configuration}' model (has: {', '.join(sorted(by_config))})")
    model = by_config[configuration]
    folds = found[model]
    if fold not in folds:
        raise UserError(f"{files.path}: {configuration} has no fold {fold} (has: {', '.join(sorted(folds))})")
    if checkpoint not in folds[fold]:
        raise UserError(f"{files.path}: fold_{fold} has no {checkpoint} (has: {', '.join(sorted(folds[fold]))}; "
                        f"choose with -chk)")
    return model, f"{model.folder}fold_{fold}/{checkpoint}"


def _read_json(files: ModelFiles, name: str) -> dict:
    if name not in files.names:
        raise UserError(f"{files.path}: the model folder has no {name.rsplit('/', 1)[-1]} ({name})")
    try:
        value = json.loads(files.read(name, MAX_SMALL_FILE_BYTES))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{files.where(name)}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"{files.where(name)}: expected a JSON object")
    return value


# Bounds on plans fields, checked before a network is built or a target plans file written: nnU-Net's planners
# cap features at 320 (3D) / 512 (2D), patches at a few hundred voxels a side and batches at a few dozen
MAX_FEATURES = 1024
MAX_STAGES = 16
MAX_PATCH_EDGE = 2048
MAX_PATCH_VOXELS = 256 ** 3
MAX_BATCH_SIZE = 1024


def _ints_within(value: object, low: int, high: int, lengths: range) -> bool:
    return isinstance(value, list) and len(value) in lengths and \
        all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value)


def check_plans(plans: dict, configuration: str, where: str) -> None:
    """Refuse plans whose network or training fields are out of bounds, before anything is built from them.

    Args:
        plans: the source's plans.json.
        configuration: the configuration to be imported.
        where: the plans file, for messages.

    Raises:
        UserError: ``features_per_stage`` not 1-16 integers in 1..:data:`MAX_FEATURES`, ``patch_size`` not 2 or 3
            integers in 1..:data:`MAX_PATCH_EDGE` (at most :data:`MAX_PATCH_VOXELS` voxels), or ``batch_size`` not
            an integer in 1..:data:`MAX_BATCH_SIZE`. Plans nnU-Net cannot read at all are left to the import,
            which reports them.
    """
    import copy
    import warnings

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    try:
        with warnings.catch_warnings():          # the old format's conversion warns; the import warns once
            warnings.simplefilter("ignore")
            config = PlansManager(copy.deepcopy(plans)).get_configuration(configuration).configuration
    except Exception:  # noqa: BLE001 - nnU-Net raises KeyError/RuntimeError/... on plans it cannot read
        config = (plans.get("configurations") or {}).get(configuration)
    if not isinstance(config, dict):
        return
    arch = config.get("architecture")
    kwargs = arch.get("arch_kwargs") if isinstance(arch, dict) else None
    features = kwargs.get("features_per_stage") if isinstance(kwargs, dict) else None
    if features is not None and not _ints_within(features, 1, MAX_FEATURES, range(1, MAX_STAGES + 1)):
        raise UserError(f"{where}: '{configuration}' features_per_stage {features!r} is not 1 to {MAX_STAGES} "
                        f"integers in 1..{MAX_FEATURES} (nnU-Net plans at most 512): refused before building the "
                        f"network")
    patch = config.get("patch_size")
    if not _ints_within(patch, 1, MAX_PATCH_EDGE, range(2, 4)) or \
            patch[0] * patch[1] * (patch[2] if len(patch) > 2 else 1) > MAX_PATCH_VOXELS:
        raise UserError(f"{where}: '{configuration}' patch_size {patch!r} is not 2 or 3 integers in "
                        f"1..{MAX_PATCH_EDGE} of at most {MAX_PATCH_VOXELS} voxels")
    batch = config.get("batch_size")
    if not (isinstance(batch, int) and not isinstance(batch, bool) and 1 <= batch <= MAX_BATCH_SIZE):
        raise UserError(f"{where}: '{configuration}' batch_size {batch!r} is not an integer in 1..{MAX_BATCH_SIZE}")


def load_v2_checkpoint(data: bytes, where: str) -> tuple[dict, str]:
    """``network_weights`` and ``trainer_name`` of a v2 checkpoint, read weights-only.

    Args:
        data: the checkpoint file's bytes.
        where: its name, for messages.

    Returns:
        (network weights, trainer name).
    """
    import torch
    ckpt = read_weights_only(data, where)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise UserError(f"{where}: not an nnU-Net v2 checkpoint (no network_weights)")
    weights = ckpt["network_weights"]
    bad = next((k for k, v in weights.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None or not weights:
        raise UserError(f"{where}: network_weights is not a mapping of names to tensors")
    return weights, str(ckpt.get("trainer_name", ""))


def read_v2_model(files: ModelFiles, configuration: str = "3d_fullres", fold: str = "0",
                  checkpoint: str = "checkpoint_final.pth", trainer: str | None = None,
                  plans: str | None = None) -> V2Model:
    """Find, choose and read one fold of a v2 model in a zip or folder.

    Args:
        files: the source's files.
        configuration: ``-c``.
        fold: ``-f``.
        checkpoint: ``-chk``.
        trainer: ``-tr`` (needed when several trainers are inside).
        plans: ``-p`` (needed when several plans are inside).

    Returns:
        The model (plans, dataset.json, network weights).
    """
    found = find_v2_models(files)
    if not found:
        raise UserError(f"{files.path}: no nnU-Net v2 model inside (expected [DatasetXXX_Name/]"
                        f"TRAINER__PLANS__CONFIGURATION/fold_N/checkpoint_final.pth)")
    model, member = select_v2_model(files, found, configuration, trainer, plans, str(fold), checkpoint)
    # every member's declared size, and their total, before reading any of them
    files.check_members([*((model.folder + name, MAX_SMALL_FILE_BYTES) for name in ("plans.json", "dataset.json")
                           if model.folder + name in files.names), (member, MAX_MEMBER_BYTES)])
    plans_json = _read_json(files, model.folder + "plans.json")
    check_plans(plans_json, configuration, files.where(model.folder + "plans.json"))     # before the checkpoint
    dataset_json = _read_json(files, model.folder + "dataset.json")
    weights, trainer_name = load_v2_checkpoint(files.read(member), files.where(member))
    dataset = model.dataset or str(plans_json.get("dataset_name", "")) or "source"
    return V2Model(files.path, dataset, model.trainer, model.plans, model.config, str(fold), checkpoint,
                   plans_json, dataset_json, weights, trainer_name)


__all__ = ["V2Model", "V2_MODEL_RE", "check_plans", "find_v2_models", "load_v2_checkpoint", "read_v2_model",
           "select_v2_model"]
