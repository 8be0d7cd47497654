"""Read nnU-Net v1 model downloads (e.g. Task008_HepaticVessel) without the v1 package.

The download is untrusted input: pickles are read with a restricted unpickler (plain containers and
numpy arrays only), torch checkpoints with ``weights_only=True``, and zip members are checked against
path traversal. Members are read from the zip directly; nothing is extracted.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import torch

from nnunet_vasculature.errors import UserError

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


class _Source:
    """Files of a v1 download: a zip (read in place) or an unpacked folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: not found")
        if self.path.is_dir():
            self.zip = None
            self.names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        else:
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"{self.path}: not a valid zip file ({e})") from None
            self.names = self.zip.namelist()
            for n in self.names:
                pp = PurePosixPath(n.replace("\\", "/"))
                if pp.is_absolute() or ".." in pp.parts or re.match(r"^[A-Za-z]:", n):
                    raise UserError(f"{self.path}: unsafe member path '{n}' (path traversal)")

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.path / name).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise UserError(f"{self.path}: cannot read {name} ({e})") from None


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


def _checkpoint_safe_globals() -> list:
    """What a v1 checkpoint needs beyond tensors, and nothing more: ``plot_stuff`` holds numpy float64
    scalars, pickled as ``scalar(dtype, bytes)``. Files written under numpy 1.x (the 2020 downloads)
    name the function ``numpy.core.multiarray.scalar``, numpy 2 names it ``numpy._core...``: both names
    are allowed for the one function."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [np.dtype, type(np.dtype(np.float64)), (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar")]


def _load_state_dict(data: bytes, where: str) -> dict:
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{where}: not a readable torch checkpoint ({type(e).__name__}: "
                        f"{_torch_error_reason(e)})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{where}: checkpoint is a {type(ckpt).__name__}, expected a dict")
    if "network_weights" in ckpt:
        raise UserError(f"{where}: this is an nnU-Net v2 checkpoint; pass it to nnUNetv2_train "
                        f"-pretrained_weights directly")
    if "state_dict" not in ckpt or not any(k.startswith("conv_blocks_context.") for k in ckpt["state_dict"]):
        raise UserError(f"{where}: not an nnU-Net v1 Generic_UNet checkpoint (no conv_blocks_context weights)")
    return ckpt["state_dict"]


def _torch_error_reason(e: Exception) -> str:
    """The informative line of a torch.load error (weights-only errors start with a long preamble)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:"):
            return ln.split(" Please use")[0][:200]
    return lines[0][:200] if lines else ""


def read_v1_model(path: Path, configuration: str = "3d_fullres", folds: Sequence[int | str] = (0,)) -> V1Model:
    """Find and read a v1 model (plans + weights of the requested folds) in a zip or folder."""
    src = _Source(path)
    found = {}
    for n in src.names:
        m = _MODEL_RE.search(n.replace("\\", "/"))
        if m:
            found.setdefault(m.group("config"), {})[m.group("fold")] = (n, m)
    if not found:
        raise UserError(f"{path}: no nnU-Net v1 model inside (expected "
                        f"<config>/TaskXXX_*/<trainer>__<plans>/fold_N/{CHECKPOINT})")
    if configuration not in found:
        raise UserError(f"{path}: no '{configuration}' model (has: {', '.join(sorted(found))})")
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
    state_dicts, plans, stage, m0 = [], None, None, None
    for f in wanted:
        name, m = available[f]
        meta = restricted_loads(src.read(name + ".pkl"), f"{path}:{name}.pkl")
        if not isinstance(meta, dict) or "plans" not in meta:
            raise UserError(f"{path}:{name}.pkl: no 'plans' entry")
        if plans is None:
            plans, m0 = meta["plans"], m
            init = meta.get("init") or ()
            stage = int(init[5]) if len(init) > 5 and isinstance(init[5], (int, np.integer)) \
                else (0 if configuration == "3d_lowres" else len(plans["plans_per_stage"]) - 1)
        state_dicts.append(_load_state_dict(src.read(name), f"{path}:{name}"))
    for key in ("plans_per_stage", "num_classes", "num_modalities"):
        if key not in plans:
            raise UserError(f"{path}: v1 plans lack '{key}'")
    return V1Model(Path(path), configuration, m0.group("task"), m0.group("trainer"), wanted, plans, stage,
                   state_dicts)
