"""Tiny nnU-Net v2 model folders (plans.json, dataset.json, fold_N/checkpoint_final.pth) for tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_plans(spacing=(50.0, 50.0, 50.0), patch=(16, 32, 32), features=(4, 8, 16),
               strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), normalization="ZScoreNormalization") -> dict:
    n = len(features)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": n, "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
                        "strides": [list(s) for s in strides], "n_conv_per_stage": [1] * n,
                        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": [32, 64, 64], "spacing": list(spacing),
        "normalization_schemes": [normalization], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False}
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [32, 64, 64],
            "image_reader_writer": "Tiff3DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {
                "max": 30000.0, "mean": 15000.0, "median": 15000.0, "min": 1000.0, "percentile_00_5": 3000.0,
                "percentile_99_5": 28000.0, "std": 4000.0}}}


def make_model_folder(root: Path, folds=(0,), **plan_kwargs) -> Path:
    """A model folder with randomly initialised weights (a different seed per fold)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plans = tiny_plans(**plan_kwargs)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "HiP-CT"},
                                                   "labels": {"background": 0, "vessel": 1},
                                                   "numTraining": 1, "file_ending": ".tif"}))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    for i, f in enumerate(folds):
        torch.manual_seed(100 + i)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 2, allow_init=True, deep_supervision=False)
        with torch.no_grad():   # non-trivial outputs: perturb norms and the head
            for name, p in net.named_parameters():
                if "norm" in name or "seg_layers" in name:
                    p.add_(torch.randn_like(p) * 0.5)
        (root / f"fold_{f}").mkdir(exist_ok=True)
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   root / f"fold_{f}" / "checkpoint_final.pth")
    return root
