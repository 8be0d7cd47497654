"""Stock ``nnUNetTrainer`` with the CPU demo schedule, for any configuration (the HuBMAP 2D lines use it)."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_vasculature.trainers.vessel_transfer import VALIDATION_ENV, SkippableValidation, demo_schedule

__all__ = ["VALIDATION_ENV", "nnUNetTrainer_demo"]


class nnUNetTrainer_demo(SkippableValidation, nnUNetTrainer):
    """nnU-Net's default trainer, shortened to ``$nnUNet_vasculature_demo_schedule`` (default 6x30:
    epochs x iterations per epoch) so that a 2D or 3D model trains in minutes on CPU;
    ``$nnUNet_vasculature_demo_validation=0`` skips the final validation."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        epochs, iters = demo_schedule()
        self.num_epochs, self.num_iterations_per_epoch = epochs, iters
        self.num_val_iterations_per_epoch = max(1, iters // 5)
