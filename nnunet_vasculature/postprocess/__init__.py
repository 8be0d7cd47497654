"""Threshold tuning, RLE and Kaggle submissions (the metrics they score with: :mod:`nnunet_vasculature.metrics`)."""
from nnunet_vasculature.io.rle import rle_decode, rle_encode

__all__ = ["rle_encode", "rle_decode"]
