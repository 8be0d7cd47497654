"""Tiny nnU-Net v2 model folders for tests: the factory lives in the package (shared with benchmarks/)."""
from nnunet_vasculature.demo.tiny_model import make_model_folder, tiny_plans

__all__ = ["make_model_folder", "tiny_plans"]
