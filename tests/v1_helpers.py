"""Real nnU-Net v1 networks (PyPI nnunet==1.7.1) saved in the official download layout."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nnunet_vasculature.pretrained.v1_export import v1_plans, write_v1_zip


def real_generic_unet(num_classes, pool, conv, base=8, seed=0):
    """nnUNetTrainerV2's Generic_UNet exactly as v1 instantiates it (identity final nonlin)."""
    from nnunet.network_architecture.generic_UNet import Generic_UNet
    from nnunet.network_architecture.initialization import InitWeights_He
    torch.manual_seed(seed)
    net = Generic_UNet(1, base, num_classes, len(pool), 2, 2, nn.Conv3d, nn.InstanceNorm3d,
                       {"eps": 1e-5, "affine": True}, nn.Dropout3d, {"p": 0, "inplace": True},
                       nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}, True, False, lambda x: x,
                       InitWeights_He(1e-2), pool, conv, False, True, True)
    # non-trivial norm parameters and biases, so that a wrong mapping cannot pass by accident
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "instnorm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def make_v1_zip(path: Path, num_classes=3, pool=([1, 2, 2], [2, 2, 2]),
                conv=([1, 3, 3], [3, 3, 3], [3, 3, 3]), patch=(8, 16, 16), base=8, folds=(0,),
                spacing=(1.5, 0.8, 0.8)):
    """Write a zip in the Task008 layout from real v1 networks; returns (zip path, {fold: network})."""
    pool, conv = [list(p) for p in pool], [list(c) for c in conv]
    nets = {f: real_generic_unet(num_classes, pool, conv, base, seed=i) for i, f in enumerate(folds)}
    plans = v1_plans(patch, pool, conv, spacing, num_classes, base)
    write_v1_zip(path, {f: n.state_dict() for f, n in nets.items()}, plans)
    return Path(path), nets
