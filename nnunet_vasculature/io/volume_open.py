"""Names kept for callers written before the input stack was split (issue 32): a multiscale input is
parsed and opened by :mod:`.input_spec` (``parse_input(spec).multiscale`` says whether it is one).
Nothing in :mod:`nnunet_vasculature.io` imports this module.
"""
from __future__ import annotations

from nnunet_vasculature.io.input_spec import open_volume

__all__ = ["open_volume"]
