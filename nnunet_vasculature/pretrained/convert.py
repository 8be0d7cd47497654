"""v1 ``Generic_UNet`` plans and weights -> :class:`V1CompatibleUNet` (nnU-Net v2)."""
from __future__ import annotations

from typing import Iterator

import torch

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.pretrained.network import V1CompatibleUNet
from nnunet_vasculature.pretrained.v1_checkpoint import V1Model

NETWORK_CLASS = "nnunet_vasculature.pretrained.network.V1CompatibleUNet"
MAX_FEATURES_3D = 320


def architecture_from_v1(model: V1Model) -> dict:
    """nnU-Net v2 ``architecture`` entry (class name, kwargs) equivalent to the v1 network."""
    sp = model.stage_plans
    pool = [list(map(int, p)) for p in sp["pool_op_kernel_sizes"]]
    kernels = [list(map(int, k)) for k in sp["conv_kernel_sizes"]]
    if len(kernels) != len(pool) + 1:
        raise UserError(f"{model.source}: v1 plans have {len(pool)} pooling and {len(kernels)} conv kernel sizes")
    if any(k not in (1, 3) for ks in kernels for k in ks):
        raise UserError(f"{model.source}: v1 kernel sizes other than 1 and 3 are not supported ({kernels})")
    if len(kernels[0]) != 3:
        raise UserError(f"{model.source}: only 3D models are supported")
    n_stages = len(kernels)
    cps = int(model.plans.get("conv_per_stage", 2))
    feats, f = [], int(model.plans.get("base_num_features", 32))
    for _ in range(n_stages):
        feats.append(f)
        f = min(int(round(f * 2)), MAX_FEATURES_3D)
    return {
        "network_class_name": NETWORK_CLASS,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": feats,
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": kernels,
            "strides": [[1, 1, 1]] + pool,
            "n_conv_per_stage": [cps] * n_stages,
            "n_conv_per_stage_decoder": [cps] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def build_network(architecture: dict, input_channels: int, num_classes: int,
                  deep_supervision: bool = False) -> V1CompatibleUNet:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], input_channels, num_classes,
                                  allow_init=True, deep_supervision=deep_supervision)


def v1_conv_keys(n_stages: int, cps: int) -> Iterator[tuple[tuple[str, int, int], str]]:
    """(our module path, v1 key prefix) for every conv+instnorm pair, in network order."""
    num_pool = n_stages - 1
    for s in range(n_stages):
        for i in range(cps):
            if s < num_pool:
                v1 = f"conv_blocks_context.{s}.blocks.{i}"
            else:   # bottleneck: Sequential(StackedConvLayers(cps - 1), StackedConvLayers(1))
                v1 = f"conv_blocks_context.{s}.0.blocks.{i}" if i < cps - 1 else f"conv_blocks_context.{s}.1.blocks.0"
            yield ("encoder", s, i), v1
    for u in range(num_pool):
        for i in range(cps):
            v1 = f"conv_blocks_localization.{u}.0.blocks.{i}" if i < cps - 1 \
                else f"conv_blocks_localization.{u}.1.blocks.0"
            yield ("decoder", u, i), v1


def load_v1_weights(net: V1CompatibleUNet, v1_sd: dict, where: str) -> None:
    """Copy v1 weights into ``net``; every tensor of both must be used, shapes must match."""
    n_stages = len(net.encoder.stages)
    cps = len(net.encoder.stages[0][0].convs)
    used = set()

    def take(key: str, target: torch.Tensor) -> None:
        if key not in v1_sd:
            raise UserError(f"{where}: v1 weights lack '{key}' (plans and checkpoint disagree)")
        src = v1_sd[key]
        if tuple(src.shape) != tuple(target.shape):
            raise UserError(f"{where}: '{key}' has shape {tuple(src.shape)}, the plans imply {tuple(target.shape)}")
        target.copy_(src.to(target.dtype))
        used.add(key)

    with torch.no_grad():
        for (part, s, i), v1 in v1_conv_keys(n_stages, cps):
            block = net.encoder.stages[s][0].convs[i] if part == "encoder" else net.decoder.stages[s].convs[i]
            take(f"{v1}.conv.weight", block.conv.weight)
            take(f"{v1}.conv.bias", block.conv.bias)
            take(f"{v1}.instnorm.weight", block.norm.weight)
            take(f"{v1}.instnorm.bias", block.norm.bias)
        for u in range(n_stages - 1):
            take(f"tu.{u}.weight", net.decoder.transpconvs[u].weight)
            net.decoder.transpconvs[u].bias.zero_()        # v1 has no bias here
            take(f"seg_outputs.{u}.weight", net.decoder.seg_layers[u].weight)
            net.decoder.seg_layers[u].bias.zero_()
    unused = [k for k in v1_sd if k not in used and not k.endswith(("running_mean", "running_var",
                                                                      "num_batches_tracked"))]
    if unused:
        raise UserError(f"{where}: v1 weights not used by the converted network, e.g. '{unused[0]}' "
                        f"({len(unused)} in all): not a nnUNetTrainerV2 Generic_UNet?")


def convert_v1_model(model: V1Model, fold_index: int = 0) -> tuple[V1CompatibleUNet, dict]:
    arch = architecture_from_v1(model)
    net = build_network(arch, model.num_input_channels, model.num_classes)
    load_v1_weights(net, model.state_dicts[fold_index], f"{model.source} fold {model.folds[fold_index]}")
    return net.eval(), arch
