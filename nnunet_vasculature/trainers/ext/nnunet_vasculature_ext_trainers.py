"""Entry module for nnU-Net's ``nnUNet_extTrainer`` search (imported as a top-level module)."""
from nnunet_vasculature.trainers.vessel_transfer import (VesselScratchTrainer, VesselTransferTrainer,
                                                         VesselTransferTrainer_50epochs,
                                                         VesselTransferTrainer_frozenEncoder,
                                                         VesselTransferTrainer_randomHead)

__all__ = ["VesselTransferTrainer", "VesselTransferTrainer_randomHead", "VesselTransferTrainer_frozenEncoder",
           "VesselTransferTrainer_50epochs", "VesselScratchTrainer"]
