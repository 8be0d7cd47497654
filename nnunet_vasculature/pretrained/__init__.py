"""Import pretrained models for fine-tuning in nnU-Net v2: the nnU-Net v1 download (Task008_HepaticVessel,
:mod:`.v1_checkpoint`, :mod:`.convert`) and nnU-Net v2 export zips or model folders (e.g. TotalSegmentator's
Dataset008_HepaticVessel, :mod:`.v2_model`); :mod:`.transfer` turns either into the transfer trainers' weights."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:            # torch is imported by the functions that need it: the CLI starts fast
    from torch import nn


def load_v1_as_v2(path: Path | str, configuration: str = "3d_fullres", fold: int | str = 0) -> "nn.Module":
    """The v1 model in ``path`` (download zip or unpacked folder) as a v2 ``torch.nn.Module``.

    The returned :class:`~nnunet_vasculature.pretrained.network.V1CompatibleUNet` has the v1 number
    of output classes (3 for Task008: background, vessel, tumour), deep supervision off, eval mode,
    and gives the same logits as the v1 ``Generic_UNet``.
    """
    from nnunet_vasculature.pretrained.convert import convert_v1_model
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    model = read_v1_model(Path(path), configuration, (fold,))
    net, _ = convert_v1_model(model)
    return net


__all__ = ["load_v1_as_v2"]
