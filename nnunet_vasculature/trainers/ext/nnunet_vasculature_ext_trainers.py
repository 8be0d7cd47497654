"""Entry module for nnU-Net's ``nnUNet_extTrainer`` search (imported as a top-level module)."""
from nnunet_vasculature.trainers.levers import (
    VesselTransferTrainer_boundaryDoU,
    VesselTransferTrainer_boundaryDoU_demo,
    VesselTransferTrainer_scaleAug055,
    VesselTransferTrainer_scaleAug055_demo,
)
from nnunet_vasculature.trainers.short_schedule import nnUNetTrainer_demo
from nnunet_vasculature.trainers.vessel_transfer import (
                                                         VesselScratchTrainer,
                                                         VesselScratchTrainer_demo,
                                                         VesselTransferTrainer,
                                                         VesselTransferTrainer_50epochs,
                                                         VesselTransferTrainer_demo,
                                                         VesselTransferTrainer_frozenEncoder,
                                                         VesselTransferTrainer_frozenEncoder_demo,
                                                         VesselTransferTrainer_sourceHead,
                                                         VesselTransferTrainer_sourceHead_demo,
)

__all__ = ["VesselTransferTrainer", "VesselTransferTrainer_sourceHead", "VesselTransferTrainer_frozenEncoder",
           "VesselTransferTrainer_50epochs", "VesselScratchTrainer", "VesselTransferTrainer_demo",
           "VesselScratchTrainer_demo", "VesselTransferTrainer_sourceHead_demo", "nnUNetTrainer_demo",
           "VesselTransferTrainer_frozenEncoder_demo", "VesselTransferTrainer_scaleAug055",
           "VesselTransferTrainer_boundaryDoU", "VesselTransferTrainer_scaleAug055_demo",
           "VesselTransferTrainer_boundaryDoU_demo"]
