"""nnunet-vasculature: nnU-Net v2 plugin for vessel segmentation in HiP-CT kidneys (SenNet + HOA)."""

__version__ = "0.1.0"
