"""Write a model in the nnU-Net v1 download layout (used to make stand-in source models for the demo).

The layout is the one of the official 2020 zips (DOMAIN.md section 5): members start at the configuration
folder, ``<config>/<task>/nnUNetTrainerV2__nnUNetPlansv2.1/{plans.pkl, postprocessing.json,
fold_N/{model_final_checkpoint.model, model_final_checkpoint.model.pkl, debug.json, progress.png}}``;
checkpoints in torch's legacy (non-zip) serialisation with the v1 keys ``epoch``, ``state_dict``,
``optimizer_state_dict``, ``lr_scheduler_state_dict`` and ``plot_stuff``.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from nnunet_vasculature.errors import atomic_file
from nnunet_vasculature.pretrained.convert import v1_conv_keys
from nnunet_vasculature.pretrained.network import V1CompatibleUNet


def v1_state_dict(net: V1CompatibleUNet) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of ``load_v1_weights``: v1 ``Generic_UNet`` keys (no transposed-conv/seg biases)."""
    n_stages = len(net.encoder.stages)
    cps = len(net.encoder.stages[0][0].convs)
    sd = OrderedDict()
    for (part, s, i), v1 in v1_conv_keys(n_stages, cps):
        block = net.encoder.stages[s][0].convs[i] if part == "encoder" else net.decoder.stages[s].convs[i]
        sd[f"{v1}.conv.weight"] = block.conv.weight.detach().cpu().clone()
        sd[f"{v1}.conv.bias"] = block.conv.bias.detach().cpu().clone()
        sd[f"{v1}.instnorm.weight"] = block.norm.weight.detach().cpu().clone()
        sd[f"{v1}.instnorm.bias"] = block.norm.bias.detach().cpu().clone()
    for u in range(n_stages - 1):
        sd[f"tu.{u}.weight"] = net.decoder.transpconvs[u].weight.detach().cpu().clone()
    for u in range(n_stages - 1):
        sd[f"seg_outputs.{u}.weight"] = net.decoder.seg_layers[u].weight.detach().cpu().clone()
    return sd


def v1_plans(patch_size: Sequence[int], pool_op_kernel_sizes: Sequence[Sequence[int]],
             conv_kernel_sizes: Sequence[Sequence[int]], spacing: Sequence[float], num_classes: int,
             base_num_features: int = 32, modality: str = "CT", intensity_properties: dict | None = None) -> dict:
    """A v1 plans dict with one 3D stage (the fields nnU-Net v1 and our importer read); with
    ``intensity_properties`` (median, mean, sd, mn, mx, percentile_99_5, percentile_00_5 of the foreground)
    also v1's ``dataset_properties`` entry its CT normalisation reads."""
    stage = {"batch_size": 2, "num_pool_per_axis": [len(pool_op_kernel_sizes)] * 3,
             "patch_size": list(patch_size), "median_patient_size_in_voxels": list(patch_size),
             "current_spacing": list(spacing), "original_spacing": list(spacing), "do_dummy_2D_data_aug": False,
             "pool_op_kernel_sizes": [list(p) for p in pool_op_kernel_sizes],
             "conv_kernel_sizes": [list(k) for k in conv_kernel_sizes]}
    plans = {"plans_per_stage": {0: stage}, "num_stages": 1, "num_modalities": 1, "modalities": {0: modality},
            "normalization_schemes": OrderedDict([(0, modality)]), "use_mask_for_norm": OrderedDict([(0, False)]),
            "num_classes": num_classes - 1, "all_classes": list(range(1, num_classes)),
            "base_num_features": base_num_features, "conv_per_stage": 2, "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "keep_only_largest_region": None, "min_region_size_per_class": None,
            "min_size_per_class": None}
    if intensity_properties is not None:
        plans["dataset_properties"] = {"intensityproperties": OrderedDict([(0, OrderedDict(intensity_properties))]),
                                       "modalities": {0: modality}, "all_classes": list(range(1, num_classes))}
    return plans


def write_v1_zip(out: Path, state_dicts: dict, plans: dict, task: str = "Task008_HepaticVessel",
                 configuration: str = "3d_fullres", trainer: str = "nnUNetTrainerV2",
                 plans_id: str = "nnUNetPlansv2.1", plot_stuff: tuple = ([], [], [], []), epoch: int = 1000,
                 fold_files: dict | None = None) -> Path:
    """Zip ``{fold: v1 state_dict}`` with their plans in the official v1 layout.

    ``plot_stuff`` is v1's (train losses, validation losses, [], validation metrics) per epoch;
    ``fold_files`` are extra ``{name: bytes}`` written into every fold folder (``progress.png``)."""
    base = f"{configuration}/{task}/{trainer}__{plans_id}"
    with atomic_file(Path(out)) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{base}/plans.pkl", pickle.dumps(plans, protocol=3))
        zf.writestr(f"{base}/postprocessing.json", json.dumps({"for_which_classes": [], "min_valid_object_sizes": {}}))
        for fold, sd in state_dicts.items():
            buf = io.BytesIO()
            torch.save({"epoch": epoch, "state_dict": sd, "optimizer_state_dict": {},
                        "lr_scheduler_state_dict": None, "plot_stuff": plot_stuff}, buf,
                       pickle_protocol=2, _use_new_zipfile_serialization=False)
            zf.writestr(f"{base}/fold_{fold}/model_final_checkpoint.model", buf.getvalue())
            meta = {"init": (f"{base}/plans.pkl", fold, "out", "data", False, 0, True, True, True),
                    "name": trainer, "class": f"<class 'nnunet.training.network_training.{trainer}.{trainer}'>",
                    "plans": plans}
            zf.writestr(f"{base}/fold_{fold}/model_final_checkpoint.model.pkl", pickle.dumps(meta, protocol=3))
            zf.writestr(f"{base}/fold_{fold}/debug.json", json.dumps({"fold": str(fold), "stage": "0"}))
            for name, data in (fold_files or {}).items():
                zf.writestr(f"{base}/fold_{fold}/{name}", data)
    return Path(out)
