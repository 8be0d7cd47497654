"""Tiny nnU-Net v2 model folders (plans.json, dataset.json, fold_N/checkpoint_final.pth) with random weights,
shared by the tests and the benchmarks; and the plans dict of one ``3d_fullres`` configuration they are built
from (nnU-Net's planner needs a dataset fingerprint, so the dict is written out here once)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

# nnU-Net's default resampling of a 3d_fullres configuration (ExperimentPlanner)
RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}}


def plain_unet_architecture(features: Sequence[int] = (4, 8, 16),
                            strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2))) -> dict:
    """The ``architecture`` entry of a plans configuration: a PlainConvUNet with one 3x3x3 convolution per stage.

    Args:
        features: features per stage (its length is the number of stages).
        strides: the stride of each stage.

    Returns:
        ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}`` as nnU-Net's planner writes it.
    """
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": n, "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
                        "strides": [list(s) for s in strides], "n_conv_per_stage": [1] * n,
                        "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def plans_3d_fullres(dataset_name: str, spacing: Sequence[float], patch: Sequence[int], median_shape: Sequence[int],
                     architecture: dict, intensity: dict,
                     normalization: str = "ZScoreNormalization", image_reader_writer: str = "Tiff3DIO",
                     batch_size: int = 2) -> dict:
    """An nnU-Net v2 plans dict with one ``3d_fullres`` configuration, one input channel, no transposition.

    Args:
        dataset_name: ``DatasetXXX_Name``.
        spacing: the configuration's (and the dataset's median) spacing, (z, y, x).
        patch: the patch size, (z, y, x).
        median_shape: the median image size in voxels, (z, y, x).
        architecture: the configuration's ``architecture`` entry (e.g. :func:`plain_unet_architecture`).
        intensity: the channel's foreground intensity properties (``max``, ``mean``, ``median``, ``min``,
            ``percentile_00_5``, ``percentile_99_5``, ``std``).
        normalization: the channel's normalization scheme.
        image_reader_writer: nnU-Net's reader class name.
        batch_size: the configuration's batch size.

    Returns:
        The plans dict, as ``plans.json`` holds it.
    """
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": batch_size, "patch_size": list(patch), "median_image_size_in_voxels": list(median_shape),
              "spacing": list(spacing), "normalization_schemes": [normalization], "use_mask_for_norm": [False],
              **RESAMPLING, "architecture": architecture, "batch_dice": False}
    return {"dataset_name": dataset_name, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(spacing),
            "original_median_shape_after_transp": list(median_shape), "image_reader_writer": image_reader_writer,
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": dict(intensity)}}


def tiny_plans(spacing: Sequence[float] = (50.0, 50.0, 50.0), patch: Sequence[int] = (16, 32, 32),
               features: Sequence[int] = (4, 8, 16),
               strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2)),
               normalization: str = "ZScoreNormalization") -> dict:
    """The plans of a tiny HiP-CT-like model (``Dataset999_Tiny``, uint16-range intensities, TIFF reader).

    Args:
        spacing: the model's spacing (µm, z, y, x).
        patch: the patch size.
        features: features per stage.
        strides: the stride of each stage.
        normalization: the channel's normalization scheme.

    Returns:
        The plans dict.
    """
    return plans_3d_fullres("Dataset999_Tiny", spacing, patch, (32, 64, 64), plain_unet_architecture(features, strides),
                            {"max": 30000.0, "mean": 15000.0, "median": 15000.0, "min": 1000.0,
                             "percentile_00_5": 3000.0, "percentile_99_5": 28000.0, "std": 4000.0},
                            normalization=normalization)


def make_model_folder(root: Path, folds: Sequence[int] = (0,), **plan_kwargs) -> Path:
    """A model folder with randomly initialised weights (a different seed per fold).

    Args:
        root: the folder to write (created; files in it are overwritten).
        folds: the folds to write a ``checkpoint_final.pth`` for.
        **plan_kwargs: passed to :func:`tiny_plans`.

    Returns:
        ``root``.
    """
    import torch
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
