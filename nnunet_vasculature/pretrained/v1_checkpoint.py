"""Read nnU-Net v1 model downloads (e.g. Task008_HepaticVessel) without the v1 package.

The download is untrusted input: pickles are read with a restricted unpickler (plain containers and
numpy arrays only), torch checkpoints with the package's one weights-only reader
(:mod:`nnunet_vasculature.io.checkpoint`), and zip members are checked against
path traversal and zip bombs (:mod:`.archive`). Members are read from the zip directly; nothing is extracted.
"""
from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.checkpoint import read_weights_only
from nnunet_vasculature.pretrained.archive import MAX_SMALL_FILE_BYTES, MAX_V1_CHECKPOINT_BYTES, ModelFiles

CHECKPOINT = "model_final_checkpoint.model"
_MODEL_RE = re.compile(r"(?:^|/)(?P<config>2d|3d_lowres|3d_fullres|3d_cascade_fullres)/(?P<task>Task\d+_[^/]+)/"
                       r"(?P<trainer>[^/]+)__(?P<plans>[^/]+)/fold_(?P<fold>\d+|all)/" + re.escape(CHECKPOINT) + "$")

_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers, numbers, strings and numpy arrays."""

    def find_class(self, module: str, name: str) -> Callable[..., object]:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "numpy" and name.endswith("DType") or (module.startswith("numpy") and name in
                                                             ("float64", "float32", "int64", "int32", "bool_")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def restricted_loads(data: bytes, where: str) -> object:
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{where}: unsafe or invalid pickle ({e})") from None
    except Exception as e:
        raise UserError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from None


@dataclass
class V1Model:
    source: Path
    configuration: str
    task: str
    trainer: str
    folds: list[str]
    plans: dict            # the v1 plans (from the checkpoint's .pkl)
    stage: int
    state_dicts: list[dict]

    @property
    def stage_plans(self) -> dict:
        return self.plans["plans_per_stage"][self.stage]

    @property
    def num_classes(self) -> int:
        return int(self.plans["num_classes"]) + 1

    @property
    def num_input_channels(self) -> int:
        return int(self.plans["num_modalities"])


def _load_state_dict(data: bytes, where: str) -> dict:
    ckpt = read_weights_only(data, where)
    if not isinstance(ckpt, dict):
        raise UserError(f"{where}: checkpoint is a {type(ckpt).__name__}, expected a dict")
    if "network_weights" in ckpt:
        raise UserError(f"{where}: this is an nnU-Net v2 checkpoint; pass it to nnUNetv2_train "
                        f"-pretrained_weights directly")
    if "state_dict" not in ckpt or not any(k.startswith("conv_blocks_context.") for k in ckpt["state_dict"]):
        raise UserError(f"{where}: not an nnU-Net v1 Generic_UNet checkpoint (no conv_blocks_context weights)")
    return ckpt["state_dict"]


def find_v1_models(files: ModelFiles) -> list[tuple[str, re.Match]]:
    """Every v1 model checkpoint in ``files``: (member name, match of the layout pattern)."""
    return [(n, m) for n in files.names if (m := _MODEL_RE.search(n.replace("\\", "/")))]


def read_v1_model(path: Path | ModelFiles, configuration: str = "3d_fullres", folds: Sequence[int | str] = (0,),
                  trainer: str | None = None, plans: str | None = None) -> V1Model:
    """Find and read a v1 model (plans + weights of the requested folds) in a zip or folder.

    Args:
        path: the download zip or unpacked folder (or its :class:`~.archive.ModelFiles`).
        configuration: ``3d_fullres`` or ``3d_lowres``.
        folds: folds to read.
        trainer: the v1 trainer to read (``-tr``; needed when a configuration has several).
        plans: the v1 plans identifier to read (``-p``; needed when a configuration has several).

    Returns:
        The model: its plans and the state dict of each fold.
    """
    src = path if isinstance(path, ModelFiles) else ModelFiles(Path(path))
    path = src.path
    matches = find_v1_models(src)
    if not matches:
        raise UserError(f"{path}: no nnU-Net v1 model inside (expected "
                        f"<config>/TaskXXX_*/<trainer>__<plans>/fold_N/{CHECKPOINT})")
    for flag, group, value in (("-tr", "trainer", trainer), ("-p", "plans", plans)):
        if value is not None:
            have = sorted({m.group(group) for _, m in matches})
            if value not in have:
                hint = "; -p chooses the source's plans, -tp names the plans written" if flag == "-p" else ""
                raise UserError(f"{path}: no v1 model for {flag} {value} (has: {', '.join(have)}){hint}")
            matches = [(n, m) for n, m in matches if m.group(group) == value]
    found: dict[str, dict[str, tuple[str, re.Match]]] = {}
    for n, m in matches:
        found.setdefault(m.group("config"), {})[m.group("fold")] = (n, m)
    if configuration not in found:
        raise UserError(f"{path}: no '{configuration}' model (has: {', '.join(sorted(found))})")
    models = sorted({f"{m.group('task')}/{m.group('trainer')}__{m.group('plans')}" for _, m in matches
                     if m.group("config") == configuration})
    if len(models) > 1:
        raise UserError(f"{path}: several {configuration} models inside; choose with -tr TRAINER -p PLANS "
                        f"(has: {', '.join(models)})")
    if configuration == "2d":
        raise UserError(f"{path}: 2D models are not supported; use 3d_fullres or 3d_lowres")
    if configuration == "3d_cascade_fullres":
        raise UserError(f"{path}: the cascade takes the 3d_lowres segmentation as extra input channels and "
                        f"cannot start a single-stage model; use 3d_fullres or 3d_lowres")
    available = found[configuration]
    wanted = [str(f) for f in folds]
    missing = [f for f in wanted if f not in available]
    if missing:
        raise UserError(f"{path}: {configuration} has no fold {missing[0]} (has: {', '.join(sorted(available))})")
    # every member's declared size, and their total, before reading any of them
    src.check_members([m for f in wanted for m in ((available[f][0] + ".pkl", MAX_SMALL_FILE_BYTES),
                                                   (available[f][0], MAX_V1_CHECKPOINT_BYTES))])
    state_dicts, v1_plans, stage, m0 = [], None, None, None
    for f in wanted:
        name, m = available[f]
        meta = restricted_loads(src.read(name + ".pkl", MAX_SMALL_FILE_BYTES), src.where(name + ".pkl"))
        if not isinstance(meta, dict) or "plans" not in meta:
            raise UserError(f"{path}:{name}.pkl: no 'plans' entry")
        if v1_plans is None:
            v1_plans, m0 = meta["plans"], m
            if not isinstance(v1_plans, dict) or "plans_per_stage" not in v1_plans:
                raise UserError(f"{src.where(name + '.pkl')}: v1 plans lack 'plans_per_stage'")
            init = meta.get("init") or ()
            stage = int(init[5]) if len(init) > 5 and isinstance(init[5], (int, np.integer)) \
                else (0 if configuration == "3d_lowres" else len(v1_plans["plans_per_stage"]) - 1)
        state_dicts.append(_load_state_dict(src.read(name, MAX_V1_CHECKPOINT_BYTES), src.where(name)))
    for key in ("plans_per_stage", "num_classes", "num_modalities"):
        if key not in v1_plans:
            raise UserError(f"{path}: v1 plans lack '{key}'")
    return V1Model(Path(path), configuration, m0.group("task"), m0.group("trainer"), wanted, v1_plans, stage,
                   state_dicts)
