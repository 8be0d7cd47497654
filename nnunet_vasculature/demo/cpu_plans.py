"""A CPU-sized variant of nnU-Net's plans, for the demos: same preprocessing, a smaller network.

nnU-Net's planner sizes the network for a GPU (2D: up to 512 features, 7+ stages, 512² patches); on two
CPU cores one iteration of that takes seconds. nnU-Net documents editing the plans file for custom
configurations; this writes a copy under another plans name whose configuration keeps the data
identifier (so the preprocessed data are shared, nothing is preprocessed twice) and trims the
architecture: fewer stages, features capped, a smaller patch, a given batch size.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_vasculature.errors import UserError, atomic_file

# per-stage lists in PlainConvUNet's arch_kwargs (the decoder list has one entry fewer)
_STAGE_LISTS = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage")


def write_small_plans(preprocessed: Path, configuration: str = "2d", source: str = "nnUNetPlans",
                      target: str = "nnUNetPlans_cpu", n_stages: int = 5, max_features: int = 32,
                      patch: tuple[int, ...] | None = None, batch_size: int | None = None) -> Path:
    """Write ``<target>.json`` next to ``<source>.json`` in a preprocessed dataset folder; returns its path.

    ``patch`` (default: the planned patch, each side at most 128) must be divisible by the product of
    the kept strides along each axis.
    """
    src = Path(preprocessed) / f"{source}.json"
    try:
        plans = json.loads(src.read_text())
        cfg = plans["configurations"][configuration]
        kw = cfg["architecture"]["arch_kwargs"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{src}: no {configuration} configuration in nnU-Net plans ({type(e).__name__}: {e})") from None
    n = max(2, min(int(n_stages), int(kw["n_stages"])))
    for key in _STAGE_LISTS:
        kw[key] = kw[key][:n]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][:n - 1]
    kw["features_per_stage"] = [min(int(f), int(max_features)) for f in kw["features_per_stage"]]
    kw["n_stages"] = n
    size = list(patch) if patch is not None else [min(int(p), 128) for p in cfg["patch_size"]]
    for axis, p in enumerate(size):
        div = 1
        for s in kw["strides"]:
            div *= int(s[axis])
        if p % div:
            raise UserError(f"{src}: patch {size} is not divisible by the network's downsampling {div} on axis {axis}")
    cfg["patch_size"] = size
    if batch_size is not None:
        cfg["batch_size"] = int(batch_size)
    plans["plans_name"] = target
    out = Path(preprocessed) / f"{target}.json"
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(plans, indent=1))
    return out


__all__ = ["write_small_plans"]
