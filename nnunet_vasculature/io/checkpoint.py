"""The one reader of torch checkpoints: weights-only, with one allowlist, for import, training and prediction.

A checkpoint is a pickle: loading it unrestricted can run any code it names. Every checkpoint this package
opens (a fold of a trained model for ``predict``/``export-model``, a v1 ``.model`` or v2 ``checkpoint_*.pth``
for ``import-pretrained``, the imported weights the transfer trainers start from) is read here with
``torch.load(weights_only=True)`` and :func:`checkpoint_allowlist`: tensors, plain Python values and, beyond
them, only what the three kinds of checkpoint hold:

- nnU-Net v2 (``nnUNetTrainer.save_checkpoint``, 2.8.x): numpy float64 and float32 scalars in the training
  log (``logging``: losses as ``np.mean`` of float32 arrays, pseudo Dice) and ``_best_ema``;
- nnU-Net v1 (``model_final_checkpoint.model``, the 2020 downloads): numpy float64 scalars in ``plot_stuff``,
  pickled under numpy 1.x as ``numpy.core.multiarray.scalar``;
- this package's imported weights (``import-pretrained``): tensors and plain values only.

A numpy scalar is pickled as ``scalar(dtype, bytes)``: the allowlist is that function (under both of its
names: numpy 2 calls it ``numpy._core.multiarray.scalar``), ``numpy.dtype`` and, as numpy 2 pickles a dtype,
the dtype classes of float64 and float32. Anything else (an object whose unpickling would call
``os.system``, a class of another package) is refused in one line naming the file and the foreign names;
nothing of the file runs.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from nnunet_vasculature.errors import UserError

# what torch's weights-only unpickler names when it refuses a global (three wordings in torch 2.6-2.9)
_REFUSED_NAME = re.compile(r"GLOBAL (\S+) was not an allowed global|unsupported GLOBAL (\S+) whose|"
                           r"allowlisted via `add_safe_globals`, but got <class '([^']+)'>")


def checkpoint_allowlist() -> list:
    """The globals a checkpoint may name beyond tensors and plain values (see the module's description).

    Returns:
        Entries for ``torch.serialization.safe_globals``: objects, or (object, name) pairs for a second name.
    """
    import numpy as np
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    return [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
            (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


def _allowed_names() -> set[str]:
    return {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in checkpoint_allowlist()}


def torch_error_reason(e: BaseException) -> str:
    """The informative line of a ``torch.load`` error, without torch's advice to load with
    ``weights_only=False`` (which would run whatever the file holds).

    Args:
        e: the exception ``torch.load`` raised.

    Returns:
        One line of at most 200 characters.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:"):
            return ln.split(" Please use")[0][:200]
    lines = [ln for ln in lines if "weights_only" not in ln and "Re-running" not in ln and "trust" not in ln]
    return lines[0][:200] if lines else type(e).__name__


def _refused_names(source: Path | bytes, error: BaseException) -> list[str]:
    """The globals outside the allowlist that made torch refuse a checkpoint (read from the pickle, not run);
    empty when ``error`` is not such a refusal (a corrupt file)."""
    import torch
    named = [next(g for g in m.groups() if g) for m in _REFUSED_NAME.finditer(str(error))]
    if not named:
        return []
    try:
        f = io.BytesIO(source) if isinstance(source, bytes) else source
        listed = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(f) if n not in _allowed_names()]
    except Exception:  # noqa: BLE001 - the legacy (non-zip) format is not listed by torch: the error names one
        listed = []
    return list(dict.fromkeys(listed + named))


def read_weights_only(source: Path | str | bytes, where: str | Path | None = None) -> Any:
    """A checkpoint loaded weights-only with :func:`checkpoint_allowlist`, on the CPU.

    Args:
        source: the file, or its bytes (a zip member).
        where: the file's name for messages (default: ``source`` when it is a path).

    Returns:
        What the checkpoint holds (a dict for every checkpoint nnU-Net or this package writes). A file
        naming anything outside the allowlist is a one-line UserError (``FILE: refused: ...``) and nothing
        of it runs; so is an unreadable file or one that does not fit in memory.
    """
    import torch
    where = str(where if where is not None else source)
    f = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with torch.serialization.safe_globals(checkpoint_allowlist()):
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _refused_names(source if isinstance(source, bytes) else f, e)
        if not names:
            raise UserError(f"{where}: not a readable checkpoint ({torch_error_reason(e)})") from None
        raise UserError(f"{where}: refused: the checkpoint holds {', '.join(names[:3])}, not only weights and plain "
                        f"values as nnU-Net writes them (loading it could run code)") from None
    except MemoryError:
        raise UserError(f"{where}: does not fit in memory") from None
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, TypeError) as e:
        raise UserError(f"{where}: not a readable checkpoint ({type(e).__name__}: {torch_error_reason(e)})") from None


__all__ = ["checkpoint_allowlist", "read_weights_only", "torch_error_reason"]
