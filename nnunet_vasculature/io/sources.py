"""Names kept for callers written before the input stack was split (issue 32): the contract is in
:mod:`.volume_source`, the SenNet readers in :mod:`.sennet_inputs`, the ``-i`` parser and opener in
:mod:`.input_spec`. Nothing in :mod:`nnunet_vasculature.io` imports this module; import from those.
"""
from __future__ import annotations

from nnunet_vasculature.io.input_spec import open_inputs
from nnunet_vasculature.io.sennet_inputs import chunked_kidneys, kaggle_kidney, raw_image
from nnunet_vasculature.io.volume_source import VolumeSource, fingerprint

__all__ = ["VolumeSource", "fingerprint", "kaggle_kidney", "raw_image", "chunked_kidneys", "open_inputs"]
