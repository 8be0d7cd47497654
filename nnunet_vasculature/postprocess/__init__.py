"""Surface-Dice metric, threshold tuning, RLE and Kaggle submissions."""
from nnunet_vasculature.io.rle import rle_decode, rle_encode
from nnunet_vasculature.postprocess.surface_dice import SurfaceDiceAccumulator, surface_dice, surface_dice_sweep

__all__ = ["surface_dice", "surface_dice_sweep", "SurfaceDiceAccumulator", "rle_encode", "rle_decode"]
