"""``nnunet-vasculature import-pretrained``: an nnU-Net v1 or v2 model as weights plus plans for the target
dataset.

Sources: the 2020 v1 download (``Task008_HepaticVessel.zip``), an nnU-Net v2 export zip (e.g.
TotalSegmentator's ``Dataset008_HepaticVessel.zip``), or a v2 model folder. The new plans keep the source
network (class, patch, kernels, strides, features, normalisation layers) but the target's own spacing,
intensity normalisation and preprocessing (moving the CT plan unchanged would resample 50 µm kidneys as if
they were millimetre CT). Because preprocessing is unchanged, the plans reuse the default plans'
``data_identifier``: data preprocessed for ``nnUNetPlans`` serves both. The weights file holds the whole
network as the target builds it (stem adapted to the target's channels, see :mod:`.transfer`) with the
source's head; the transfer trainers replace the head.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.paths import nnunet_folder, pretrained_path

DEFAULT_PLANS_NAME = "nnUNetPlans_Task008"       # what the 2020 Task008 download's plans are named


def _dataset_name(dataset_id: int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(int(dataset_id))
    except RuntimeError as e:
        raise UserError(f"dataset {dataset_id}: {str(e).splitlines()[0]}") from None


def _target_plans(dataset_id: int) -> tuple[str, Path, Path, dict]:
    """Dataset name, its raw and preprocessed folders and its default plans (planned now if missing)."""
    raw, preprocessed = nnunet_folder("nnUNet_raw"), nnunet_folder("nnUNet_preprocessed")
    name = _dataset_name(dataset_id)
    pre = preprocessed / name
    plans_file = pre / "nnUNetPlans.json"
    if not plans_file.is_file():
        print(f"{plans_file} not found: extracting the fingerprint and planning (stock nnU-Net)")
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
        extract_fingerprints([int(dataset_id)], num_processes=2, check_dataset_integrity=True)
        plan_experiments([int(dataset_id)])
    return name, raw / name, pre, json.loads(plans_file.read_text())


def default_plans_name(source_name: str, kind: str) -> str:
    """``nnUNetPlans_Task008`` for the v1 Task008 download, ``nnUNetPlans_<DatasetXXX_Name>`` for a v2 model.

    Args:
        source_name: the source's task or dataset name.
        kind: "v1" or "v2".

    Returns:
        The plans name written unless ``-tp`` names another.
    """
    return f"nnUNetPlans_{source_name.split('_')[0]}" if kind == "v1" else f"nnUNetPlans_{source_name}"


def import_pretrained(source: Path, dataset_id: int, configuration: str = "3d_fullres", fold: int | str = "0",
                      plans_name: str | None = None, vessel_channel: int | None = None,
                      checkpoint: str = "checkpoint_final.pth", trainer: str | None = None,
                      source_plans: str | None = None, target_configuration: str | None = None
                      ) -> tuple[Path, Path]:
    """Write plans and weights for fine-tuning dataset ``dataset_id`` from a v1 or v2 model.

    Args:
        source: v1 download zip or folder, v2 export zip, v2 results dataset folder or model folder.
        dataset_id: target dataset ID.
        configuration: source configuration (``-c``).
        fold: source fold (``-f``).
        plans_name: name of the written plans (``-tp``; default :func:`default_plans_name`).
        vessel_channel: source class that ``_sourceHead`` starts the vessel logit from (None: by label name).
        checkpoint: v2 checkpoint file (``-chk``).
        trainer: source trainer (``-tr``), needed when several are inside.
        source_plans: source plans identifier (``-p``), needed when several are inside.
        target_configuration: configuration of the target plans to adapt (default: ``configuration``).

    Returns:
        (plans file, weights file).
    """
    import torch  # here, not at the top: `--help` starts without torch

    from nnunet_vasculature.pretrained.archive import ModelFiles
    from nnunet_vasculature.pretrained.transfer import adapt_input_channels, head_channels, load_source
    target_configuration = target_configuration or configuration
    files = ModelFiles(Path(source))                 # cheap checks first: layout, traversal, sizes
    from nnunet_vasculature.pretrained.known_sources import describe_check, known_download_checksum
    known = known_download_checksum(Path(source)) if Path(source).is_file() else None   # a mismatch: UserError
    if describe_check(known):
        print(describe_check(known))
    _dataset_name(dataset_id)
    model = load_source(files, configuration, str(fold), checkpoint, trainer, source_plans)
    channels, head_note = head_channels(model, vessel_channel)
    # nnU-Net's own configuration names say their dimension: refused before any fingerprint or planning
    named_dims = 2 if target_configuration == "2d" else 3 if target_configuration.startswith("3d_") else None
    if named_dims is not None and model.dimension != named_dims:
        raise UserError(f"{source}: a {model.dimension}D source ({configuration}) cannot start the {named_dims}D "
                        f"'{target_configuration}' of {_dataset_name(dataset_id)}; pass -c/-tc with configurations "
                        f"of one dimension")
    name, raw_dataset, pre, plans = _target_plans(dataset_id)
    if target_configuration not in plans["configurations"]:
        raise UserError(f"{pre / 'nnUNetPlans.json'}: no '{target_configuration}' configuration to adapt "
                        f"(has: {', '.join(plans['configurations'])})")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    target_config = PlansManager(plans).get_configuration(target_configuration)
    dims = len(target_config.patch_size)
    if model.dimension != dims:
        raise UserError(f"{source}: a {model.dimension}D source ({configuration}) cannot start the {dims}D "
                        f"'{target_configuration}' of {name}; pass -c/-tc with configurations of one dimension")
    n_channels = len(json.loads((raw_dataset / "dataset.json").read_text()).get("channel_names", {"0": ""}))
    weights, adapted = adapt_input_channels(model, n_channels)
    plans_name = plans_name or default_plans_name(model.name, model.kind)
    target = copy.deepcopy(target_config.configuration)
    target.pop("inherits_from", None)
    target["architecture"] = model.architecture
    target["patch_size"] = list(model.patch_size)
    target["batch_size"] = int(model.batch_size)
    new_plans = copy.deepcopy(plans)
    new_plans["plans_name"] = plans_name
    new_plans["configurations"] = {target_configuration: target}
    new_plans["transfer_source"] = {
        "file": str(Path(source).resolve()), "format": f"nnU-Net {model.kind}", "name": model.name,
        "configuration": configuration, "fold": str(fold), **model.description,
        "input_channels": [model.num_input_channels, n_channels], "stem_adapted": adapted,
        "note": "architecture and patch size from the source; spacing and normalisation from the target",
        **({"known_download": known} if known else {})}
    plans_out = pre / f"{plans_name}.json"
    weights_out = Path(pretrained_path(str(pre), plans_name, target_configuration))
    with atomic_file(weights_out) as tmp:
        torch.save({"network_weights": weights, "head_channels": channels, "source_num_classes": model.num_heads,
                    "source": new_plans["transfer_source"]}, tmp)
    with atomic_file(plans_out) as tmp:
        tmp.write_text(json.dumps(new_plans, indent=1))
    n_params = sum(v.numel() for v in {v.untyped_storage().data_ptr(): v for v in weights.values()}.values())
    print(f"converted {model.kind} {model.name} {configuration} fold {fold}: {n_params / 1e6:.1f} M parameters, "
          f"{model.architecture['network_class_name'].rsplit('.', 1)[-1]}, patch {target['patch_size']}, "
          f"spacing {target['spacing']} (target's own)")
    if adapted:
        rule = "repeated over" if model.num_input_channels == 1 else "averaged into"
        print(f"input channels: the source takes {model.num_input_channels}, {name} has {n_channels}: the stem "
              f"({', '.join(adapted)}) {rule} the target channels (summed over source channels, divided evenly "
              f"over target channels)")
    print(f"head: {model.num_heads} source classes; the transfer trainers start a new head ({head_note})")
    print(f"wrote {plans_out}\nwrote {weights_out}")
    d = int(dataset_id)
    print("next:\n"
          f"  nnUNetv2_preprocess -d {d} -plans_name {plans_name} -c {target_configuration} -np 2   "
          f"# skip if nnUNetPlans {target_configuration} is preprocessed\n"
          f"  eval \"$(nnunet-vasculature env)\"\n"
          f"  nnUNetv2_train {d} {target_configuration} 0 -tr VesselTransferTrainer -p {plans_name}")
    return plans_out, weights_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``import-pretrained``.

    Args:
        sub: the CLI's subparsers.
    """
    p = sub.add_parser("import-pretrained", help="import an nnU-Net v1 or v2 model (Task008 zip, TotalSegmentator's "
                                                 "Dataset008_HepaticVessel.zip, a v2 model folder) for fine-tuning")
    p.add_argument("source", nargs="?", type=Path, help="the model zip or folder (or -i)")
    p.add_argument("-i", dest="input", type=Path, help="v1 download zip or folder, v2 export zip or model folder")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="target dataset ID")
    p.add_argument("-c", dest="configuration", default="3d_fullres", help="source configuration (default 3d_fullres)")
    p.add_argument("-f", dest="fold", default="0", help="source fold (0-4 or 'all'; default 0)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                   help="v2 checkpoint file (default checkpoint_final.pth)")
    p.add_argument("-tr", dest="trainer", help="source trainer, when the source holds several")
    p.add_argument("-p", dest="source_plans", help="source plans identifier, when the source holds several")
    p.add_argument("-tc", dest="target_configuration", help="target configuration to adapt (default: as -c)")
    p.add_argument("-tp", dest="plans_name", help="name of the plans to write (default nnUNetPlans_Task008 "
                                                  "for the v1 download, nnUNetPlans_<DatasetXXX_Name> for v2)")
    p.add_argument("--vessel_channel", type=int, default=None,
                   help="source class whose logit starts the vessel logit with _sourceHead (default: the label "
                        "named *vessel*, else 1)")

    def run(a: argparse.Namespace) -> None:
        src = a.input or a.source
        if src is None:
            raise UserError("give the model zip or folder: import-pretrained -i Dataset008_HepaticVessel.zip -d ID")
        import_pretrained(src, a.dataset_id, a.configuration, a.fold, a.plans_name, a.vessel_channel,
                          a.checkpoint, a.trainer, a.source_plans, a.target_configuration)

    p.set_defaults(func=run)
