"""A nnU-Net v2 network that reproduces nnU-Net v1's ``Generic_UNet`` (nnUNetTrainerV2 flavour).

v1 and v2 U-Nets differ in one place: v1's decoder stage u convolves with the kernel of encoder stage
``-(u+1)`` (one deeper than the skip it merges), v2's ``PlainConvUNet`` with that of ``-(u+2)``. With
anisotropic kernels (e.g. [1, 3, 3] in the first stage, usual for CT) v1 weights therefore do not fit a
``PlainConvUNet``. This class takes the same keyword arguments as ``PlainConvUNet`` so that nnU-Net v2
plans can name it (``network_class_name``), and exposes ``decoder.deep_supervision`` as nnU-Net expects.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Type, Union

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

IntOrSeq = Union[int, List[int], Tuple[int, ...]]
PerStageSizes = Union[int, Sequence[int], Sequence[Sequence[int]]]   # kernel sizes / strides: per stage, per axis


class V1Decoder(nn.Module):
    def __init__(self, encoder: PlainConvEncoder, num_classes: int, n_conv_per_stage: IntOrSeq,
                 deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        n_enc = len(encoder.output_channels)
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * (n_enc - 1)
        transp = get_matching_convtransp(conv_op=encoder.conv_op)
        stages, transpconvs, seg_layers = [], [], []
        for u in range(n_enc - 1):
            below = encoder.output_channels[-(u + 1)]
            skip = encoder.output_channels[-(u + 2)]
            stride = encoder.strides[-(u + 1)]
            transpconvs.append(transp(below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(StackedConvBlocks(
                num_convs=n_conv_per_stage[u], conv_op=encoder.conv_op, input_channels=2 * skip,
                output_channels=skip,
                kernel_size=encoder.kernel_sizes[-(u + 1)],      # v1: one stage deeper than PlainConvUNet
                initial_stride=1, conv_bias=encoder.conv_bias, norm_op=encoder.norm_op,
                norm_op_kwargs=encoder.norm_op_kwargs, dropout_op=encoder.dropout_op,
                dropout_op_kwargs=encoder.dropout_op_kwargs, nonlin=encoder.nonlin,
                nonlin_kwargs=encoder.nonlin_kwargs))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        lres = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for u, (tu, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = torch.cat((tu(lres), skips[-(u + 2)]), 1)
            x = stage(x)
            if self.deep_supervision or u == last:
                outputs.append(self.seg_layers[u](x))
            lres = x
        return outputs[::-1] if self.deep_supervision else outputs[-1]


class V1CompatibleUNet(nn.Module):
    """U-Net with v1 ``Generic_UNet`` topology (strided-conv pooling, transposed-conv upsampling)."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSeq,
                 conv_op: Type[nn.Module], kernel_sizes: PerStageSizes, strides: PerStageSizes,
                 n_conv_per_stage: IntOrSeq, num_classes: int, n_conv_per_stage_decoder: IntOrSeq,
                 conv_bias: bool = True, norm_op: Type[nn.Module] | None = None, norm_op_kwargs: dict = None,
                 dropout_op: Type[nn.Module] | None = None, dropout_op_kwargs: dict = None,
                 nonlin: Type[nn.Module] | None = None, nonlin_kwargs: dict = None, deep_supervision: bool = False):
        super().__init__()
        self.encoder = PlainConvEncoder(
            input_channels=input_channels, n_stages=n_stages, features_per_stage=features_per_stage,
            conv_op=conv_op, kernel_sizes=kernel_sizes, strides=strides, n_conv_per_stage=n_conv_per_stage,
            conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
            dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, return_skips=True)
        self.decoder = V1Decoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.encoder(x))

    @staticmethod
    def initialize(module: nn.Module) -> None:
        InitWeights_He(1e-2)(module)
