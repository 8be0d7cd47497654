"""``nnunet-vasculature import-pretrained``: a v1 model as v2 weights plus plans for the target dataset.

The new plans keep the source architecture and patch size but the target's own spacing, intensity
normalisation and preprocessing (moving the CT plan unchanged would resample 50 µm kidneys as if they
were millimetre CT). Because preprocessing is unchanged, the plans reuse the default plans'
``data_identifier``: data preprocessed for ``nnUNetPlans`` serves both.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from nnunet_vasculature.errors import UserError, atomic_file
from nnunet_vasculature.io.paths import nnunet_folder, pretrained_path

DEFAULT_PLANS_NAME = "nnUNetPlans_Task008"


def _target_plans(dataset_id: int) -> tuple[str, Path, Path, dict]:
    """Dataset name, its raw and preprocessed folders and its default plans (planned now if missing)."""
    raw, preprocessed = nnunet_folder("nnUNet_raw"), nnunet_folder("nnUNet_preprocessed")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        name = maybe_convert_to_dataset_name(int(dataset_id))
    except RuntimeError as e:
        raise UserError(f"dataset {dataset_id}: {str(e).splitlines()[0]}") from None
    pre = preprocessed / name
    plans_file = pre / "nnUNetPlans.json"
    if not plans_file.is_file():
        print(f"{plans_file} not found: extracting the fingerprint and planning (stock nnU-Net)")
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
        extract_fingerprints([int(dataset_id)], num_processes=2, check_dataset_integrity=True)
        plan_experiments([int(dataset_id)])
    return name, raw / name, pre, json.loads(plans_file.read_text())


def import_pretrained(source: Path, dataset_id: int, configuration: str = "3d_fullres", fold: int | str = "0",
                      plans_name: str = DEFAULT_PLANS_NAME, vessel_channel: int = 1) -> tuple[Path, Path]:
    import torch  # here, not at the top: `--help` starts without torch

    from nnunet_vasculature.pretrained.convert import convert_v1_model
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    model = read_v1_model(Path(source), configuration, (fold,))
    net, arch = convert_v1_model(model)
    name, raw_dataset, pre, plans = _target_plans(dataset_id)
    if configuration not in plans["configurations"]:
        raise UserError(f"{pre / 'nnUNetPlans.json'}: no '{configuration}' configuration to adapt "
                        f"(has: {', '.join(plans['configurations'])})")
    n_channels = len(json.loads((raw_dataset / "dataset.json").read_text())
                     .get("channel_names", {"0": ""}))
    if n_channels != model.num_input_channels:
        raise UserError(f"{source}: the source model takes {model.num_input_channels} channel(s), "
                        f"{name} has {n_channels}")
    if not 0 < vessel_channel < model.num_classes:
        raise UserError(f"--vessel_channel {vessel_channel}: the source model has classes 0..{model.num_classes - 1}")
    target = copy.deepcopy(plans["configurations"][configuration])
    target.pop("inherits_from", None)
    target["architecture"] = arch
    target["patch_size"] = [int(p) for p in model.stage_plans["patch_size"]]
    target["batch_size"] = int(model.stage_plans.get("batch_size", 2))
    new_plans = copy.deepcopy(plans)
    new_plans["plans_name"] = plans_name
    new_plans["configurations"] = {configuration: target}
    new_plans["transfer_source"] = {
        "file": str(Path(source).resolve()), "task": model.task, "configuration": configuration,
        "fold": str(fold), "v1_trainer": model.trainer, "v1_stage": model.stage,
        "v1_spacing": [float(s) for s in model.stage_plans.get("current_spacing", [])],
        "note": "architecture and patch size from the source; spacing and normalisation from the target"}
    plans_out = pre / f"{plans_name}.json"
    weights_out = Path(pretrained_path(str(pre), plans_name, configuration))
    with atomic_file(weights_out) as tmp:
        torch.save({"network_weights": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "head_channels": [0, vessel_channel], "source_num_classes": model.num_classes,
                    "source": new_plans["transfer_source"]}, tmp)
    with atomic_file(plans_out) as tmp:
        tmp.write_text(json.dumps(new_plans, indent=1))
    n_params = sum(p.numel() for p in net.parameters())
    print(f"converted {model.task} {configuration} fold {fold}: {n_params / 1e6:.1f} M parameters, "
          f"patch {target['patch_size']}, spacing {target['spacing']} (target's own)")
    print(f"wrote {plans_out}\nwrote {weights_out}")
    d = int(dataset_id)
    print("next:\n"
          f"  nnUNetv2_preprocess -d {d} -plans_name {plans_name} -c {configuration} -np 2   "
          f"# skip if nnUNetPlans {configuration} is preprocessed\n"
          f"  eval \"$(nnunet-vasculature env)\"\n"
          f"  nnUNetv2_train {d} {configuration} 0 -tr VesselTransferTrainer -p {plans_name}")
    return plans_out, weights_out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-pretrained", help="import an nnU-Net v1 model (e.g. Task008 zip) for fine-tuning")
    p.add_argument("source", nargs="?", type=Path, help="v1 download zip or unpacked folder (or -i)")
    p.add_argument("-i", dest="input", type=Path, help="v1 download zip or unpacked folder")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="target dataset ID")
    p.add_argument("-c", dest="configuration", default="3d_fullres", choices=("3d_fullres", "3d_lowres"))
    p.add_argument("-f", dest="fold", default="0", help="source fold (0-4 or 'all'; default 0)")
    p.add_argument("-p", dest="plans_name", default=DEFAULT_PLANS_NAME, help="name of the plans to write")
    p.add_argument("--vessel_channel", type=int, default=1,
                   help="source class whose logit starts the vessel logit (Task008: 1 = vessel)")

    def run(a: argparse.Namespace) -> None:
        src = a.input or a.source
        if src is None:
            raise UserError("give the v1 zip or folder: import-pretrained -i Task008_HepaticVessel.zip -d ID")
        import_pretrained(src, a.dataset_id, a.configuration, a.fold, a.plans_name, a.vessel_channel)

    p.set_defaults(func=run)
