"""One weights-only checkpoint reader for import (v1 and v2), training and prediction: the same checkpoint
is read (or refused) alike at all four places that open one.

Fixtures are written with ``torch.save`` directly (the formats of nnU-Net's ``save_checkpoint``, of v1's
``.model`` and of ``import-pretrained``'s weights), not by the reader under test.
"""
import io
import os
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import nnunet_vasculature
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.model import read_checkpoint
from nnunet_vasculature.pretrained.v1_checkpoint import _load_state_dict
from nnunet_vasculature.pretrained.v2_model import load_v2_checkpoint
from nnunet_vasculature.trainers.vessel_transfer import TransferSetupError, VesselTransferTrainer


class _Payload:
    """Unpickling it would run a shell command that leaves ``marker``."""
    marker: Path

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _network() -> torch.nn.Module:
    net = torch.nn.Module()
    net.encoder = torch.nn.Conv3d(1, 2, 1)
    net.seg_layers = torch.nn.ModuleList([torch.nn.Conv3d(2, 2, 1)])
    return net


def _v2_bytes(extra: object) -> bytes:
    """What nnU-Net's ``save_checkpoint`` writes, with numpy scalars in the log (float64 and float32, as the
    losses and the pseudo Dice are) and ``extra``; it also serves as imported weights (``network_weights``)."""
    ckpt = {"network_weights": _network().state_dict(), "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres", "device": torch.device("cpu")},
            "logging": {"train_losses": [np.float32(0.5)], "mean_fg_dice": [np.float64(0.25)]},
            "_best_ema": np.float64(0.3), "head_channels": [0, 1], "extra": extra}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _v1_bytes(extra: object) -> bytes:
    """A v1 ``.model``: torch's legacy format, pickle protocol 2, numpy float64 scalars in ``plot_stuff``."""
    ckpt = {"epoch": 1, "state_dict": {"conv_blocks_context.0.blocks.0.conv.weight": torch.zeros(2, 1, 3, 3, 3)},
            "plot_stuff": ([np.float64(0.5)], [np.float64(0.4)], [], [np.float64(0.6)]), "extra": extra}
    buf = io.BytesIO()
    torch.save(ckpt, buf, pickle_protocol=2, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _trainer_load(path: Path) -> types.SimpleNamespace:
    """``VesselTransferTrainer.load_transfer_weights`` on a stand-in trainer holding a matching network (the
    trainer's own method and nnU-Net's ``load_pretrained_weights``; no dataset or plans needed)."""
    trainer = types.SimpleNamespace(network=_network(), is_ddp=False, head_init="random",
                                    plans_manager=types.SimpleNamespace(plans_name="p"), log=[],
                                    find_pretrained=lambda: str(path))
    trainer.print_to_log_file = trainer.log.append
    trainer._init_head = lambda *args: VesselTransferTrainer._init_head(trainer, *args)
    VesselTransferTrainer.load_transfer_weights(trainer)
    return trainer


def _four_sites(tmp_path: Path, extra: object) -> dict:
    """Each place that opens a checkpoint, on the same content: prediction (a fold's file), v2 import (zip
    member bytes), v1 import (a .model's bytes) and the transfer trainer's pretrained weights (a file)."""
    v2 = _v2_bytes(extra)
    fold = tmp_path / "checkpoint_final.pth"
    fold.write_bytes(v2)
    return {"predict": lambda: read_checkpoint(fold),
            "import v2": lambda: load_v2_checkpoint(v2, "m.zip:fold_0/checkpoint_final.pth"),
            "import v1": lambda: _load_state_dict(_v1_bytes(extra), "t.zip:fold_0/model_final_checkpoint.model"),
            "train": lambda: _trainer_load(fold)}


def test_numpy_scalars_of_the_logs_are_read_everywhere(tmp_path):
    """float64/float32 scalars (nnU-Net v2's log, v1's plot_stuff) load at all four places (the trainer's
    weights-only read had no allowlist and refused them)."""
    for site, load in _four_sites(tmp_path, np.float64(1.5)).items():
        assert load() is not None, site
    trainer = _trainer_load(tmp_path / "checkpoint_final.pth")
    assert trainer.pretrained_loaded_from == str(tmp_path / "checkpoint_final.pth")
    saved = torch.load(tmp_path / "checkpoint_final.pth", weights_only=False)["network_weights"]   # our fixture
    assert torch.equal(trainer.network.encoder.weight, saved["encoder.weight"])


def test_code_in_a_checkpoint_is_refused_alike_everywhere(tmp_path):
    """An os.system payload: one line naming the file and ``posix.system`` at every site, the trainer's
    included (a traceback from torch there before), and the command never runs."""
    _Payload.marker = tmp_path / "pwned"
    for site, load in _four_sites(tmp_path, _Payload()).items():
        with pytest.raises((UserError, TransferSetupError)) as e:
            load()
        message = str(e.value.code if isinstance(e.value, SystemExit) else e.value)
        assert re.search(r"(checkpoint_final\.pth|\.model): refused: the checkpoint holds posix\.system, not only "
                         r"weights", message), (site, message)
        assert "\n" not in message and "weights_only" not in message, site
    assert not _Payload.marker.exists()


def test_a_dtype_outside_the_allowlist_is_refused_everywhere(tmp_path):
    """The one allowlist is the narrowest: an int64 scalar (no checkpoint of nnU-Net v1, v2 or of this package
    holds one) is refused at every site, by name."""
    for site, load in _four_sites(tmp_path, np.int64(3)).items():
        with pytest.raises((UserError, TransferSetupError), match="Int64DType"):
            load()


def test_no_other_torch_load_in_the_package():
    """Every checkpoint of the package is opened by io/checkpoint.py (no second allowlist can drift)."""
    package = Path(nnunet_vasculature.__file__).parent
    loaders = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if "torch.load(" in p.read_text() or "safe_globals(" in p.read_text())
    assert loaders == ["io/checkpoint.py"]
