"""Stock ``nnUNetTrainer`` with the CPU demo schedule, for any configuration (the HuBMAP 2D lines use it)."""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_vasculature.trainers.common import DemoLength

__all__ = ["nnUNetTrainer_demo"]


class nnUNetTrainer_demo(DemoLength, nnUNetTrainer):
    """nnU-Net's default trainer, shortened to ``$nnUNet_vasculature_demo_schedule`` (default 6x30:
    epochs x iterations per epoch) so that a 2D or 3D model trains in minutes on CPU;
    ``$nnUNet_vasculature_demo_validation=0`` skips the final validation."""
