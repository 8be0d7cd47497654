"""Fine-tuning trainers for nnU-Net v2 that start from an imported v1 model (Task008_HepaticVessel).

Found by the stock ``nnUNetv2_train ... -tr VesselTransferTrainer`` once ``nnUNet_extTrainer`` points
at this package's ``trainers/ext`` folder (``eval "$(nnunet-vasculature env)"``).

Weights are looked up, in order, in ``$nnUNet_vasculature_pretrained`` and next to the plans:
``$nnUNet_preprocessed/DatasetXXX/<plans>__<configuration>__pretrained.pth`` (written by
``nnunet-vasculature import-pretrained``). ``-pretrained_weights FILE`` still works as in stock nnU-Net.
"""
from __future__ import annotations

import os
from os.path import isfile
from pathlib import Path

import torch
from nnunetv2.training.lr_scheduler.warmup import Lin_incr_LRScheduler, PolyLRScheduler_offset
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.checkpoint import read_weights_only
from nnunet_vasculature.io.paths import pretrained_path
from nnunet_vasculature.trainers.common import DemoLength, TrainerSetupError

PRETRAINED_ENV = "nnUNet_vasculature_pretrained"


TransferSetupError = TrainerSetupError   # the name the tests and users know


class WarmupPolyLRScheduler(_LRScheduler):
    """nnU-Net's linear warm-up (``Lin_incr_LRScheduler``) for the first ``warmup`` epochs, then its
    polynomial decay (``PolyLRScheduler_offset``); ``step(epoch)`` as nnU-Net calls it."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int, warmup: int,
                 exponent: float = 0.9):
        warmup = min(warmup, max_steps - 1)       # a 1-epoch schedule has no warm-up (the decay needs a step)
        self.warmup = warmup
        # lr = initial_lr * (epoch + 1) / (warmup + 1) during the warm-up
        self.warm = Lin_incr_LRScheduler(optimizer, initial_lr, warmup + 1)
        self.poly = PolyLRScheduler_offset(optimizer, initial_lr, max_steps, warmup, exponent)
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        (self.warm if current_step < self.warmup else self.poly).step(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self._last_lr


def encoder_param_groups(network: torch.nn.Module) -> list[dict]:
    """Two SGD parameter groups: the encoder's parameters (group 0) and all others (group 1)."""
    net = getattr(network, "_orig_mod", network)
    encoder = list(net.encoder.parameters())
    ids = {id(p) for p in encoder}
    return [{"params": encoder}, {"params": [p for p in net.parameters() if id(p) not in ids]}]


def freeze_encoder_group(optimizer: torch.optim.Optimizer, frozen: bool, just_unfrozen: bool) -> None:
    """Freeze the encoder by a learning rate of 0 for its group (set after the scheduler's step).

    Gradients still flow through every parameter, so DistributedDataParallel sees the same graph in
    every iteration (toggling ``requires_grad`` after the DDP wrap breaks its reducer). On unfreezing,
    the momentum the encoder gathered while frozen is dropped, so it starts like a fresh optimiser."""
    group = optimizer.param_groups[0]
    if frozen:
        group["lr"] = 0.0
    elif just_unfrozen:
        for p in group["params"]:
            optimizer.state.pop(p, None)


class VesselTransferTrainer(nnUNetTrainer):
    """Short fine-tune from imported weights: 15 epochs, LR 1e-3 with 2 warm-up epochs, a new random
    2-class head (``_sourceHead`` starts it from the source's background/vessel logits instead; it did
    worse in benchmarks/RESULTS.md)."""

    head_init = "random"          # "random", or "source": copy the bg/vessel logits of the source head
    use_pretrained = True
    freeze_encoder_epochs = 0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 15
        self.initial_lr = 1e-3
        self.warmup_epochs = 2
        self.pretrained_loaded_from = None

    def initialize(self) -> None:
        was = self.was_initialized
        super().initialize()
        if not was and self.use_pretrained:
            self.load_transfer_weights()

    def find_pretrained(self) -> str | None:
        env = os.environ.get(PRETRAINED_ENV)
        if env:
            return env
        path = pretrained_path(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name,
                               self.configuration_name)
        return path if isfile(path) else None

    def load_transfer_weights(self) -> None:
        """Everything but the head through nnU-Net's own ``load_pretrained_weights`` (what
        ``-pretrained_weights`` runs: it skips ``.seg_layers.`` keys and requires every other key of the
        network, with its shape), then the head: kept as initialised (``head_init = "random"``) or the
        source's background/vessel channels (``"source"``)."""
        from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
        path = self.find_pretrained()
        if path is None:
            raise TransferSetupError(self._no_weights_message())
        # the package's weights-only reader first (its one allowlist): it refuses a file carrying code before
        # nnU-Net's unrestricted torch.load opens it, and gives the source head
        try:
            ckpt = read_weights_only(path)
        except UserError as e:
            raise TransferSetupError(str(e)) from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
            raise TransferSetupError(f"{path}: not imported weights (no network_weights); write them with "
                                     f"'nnunet-vasculature import-pretrained'")
        try:
            load_pretrained_weights(self.network, path)
        except AssertionError as e:
            raise TransferSetupError(f"{path}: the imported weights do not match plans "
                                     f"'{self.plans_manager.plans_name}' ({str(e).splitlines()[0][:200]})") from None
        net = self.network.module if self.is_ddp else self.network
        net = getattr(net, "_orig_mod", net)
        source, channels = ckpt["network_weights"], ckpt.get("head_channels", [0, 1])
        head = {key: self._init_head(key, value, source.get(key), channels)
                for key, value in net.state_dict().items() if ".seg_layers." in key}
        net.load_state_dict(head, strict=False)
        self.pretrained_loaded_from = path
        self.print_to_log_file(f"loaded transfer weights from {path} (head: {self.head_init})")

    def _no_weights_message(self) -> str:
        """Which plans do have imported weights for this configuration (the usual cause: no -p)."""
        plans, config = self.plans_manager.plans_name, self.configuration_name
        suffix = f"__{config}__pretrained.pth"
        imported = sorted(p.name[:-len(suffix)] for p in Path(self.preprocessed_dataset_folder_base).glob(f"*{suffix}"))
        if imported:
            return (f"plans '{plans}' have no imported weights for {config}; weights were imported for plans "
                    f"{', '.join(imported)}: pass -p {imported[0]} to nnUNetv2_train")
        return (f"no imported weights for plans '{plans}' ({config}) in {self.preprocessed_dataset_folder_base}: "
                f"run 'nnunet-vasculature import-pretrained -i SOURCE.zip -d ID' or set {PRETRAINED_ENV}")

    def _init_head(self, key: str, value: torch.Tensor, src: torch.Tensor | None, channels: list[int]
                   ) -> torch.Tensor:
        """The initial value of head parameter ``key``: ``value`` (the network's own initialisation), or
        with ``head_init == "source"`` the source head's ``channels`` where they fit."""
        if self.head_init != "source" or src is None or len(channels) != value.shape[0]:
            return value
        return src[channels].clone()

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, WarmupPolyLRScheduler]:
        optimizer = torch.optim.SGD(encoder_param_groups(self.network), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()          # the scheduler sets every group's learning rate
        if self.freeze_encoder_epochs:
            e = self.current_epoch
            freeze_encoder_group(self.optimizer, e < self.freeze_encoder_epochs,
                                 e == self.freeze_encoder_epochs)


class VesselTransferTrainer_sourceHead(VesselTransferTrainer):
    """Same, with the 2-class head initialised from the source's background and vessel channels."""
    head_init = "source"


class VesselTransferTrainer_frozenEncoder(VesselTransferTrainer):
    """Encoder frozen for the first 5 epochs: decoder and head adapt first (warm start)."""
    freeze_encoder_epochs = 5


class VesselTransferTrainer_50epochs(VesselTransferTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class VesselScratchTrainer(VesselTransferTrainer):
    """The same schedule and architecture from random weights: the baseline for the transfer."""
    use_pretrained = False


class VesselTransferTrainer_demo(DemoLength, VesselTransferTrainer):
    """CPU demo length (default 6 epochs x 30 iterations; ``$nnUNet_vasculature_demo_schedule``) with a
    one-epoch warm-up; ``$nnUNet_vasculature_demo_validation=0`` skips the final validation."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_epochs = 1


class VesselScratchTrainer_demo(VesselTransferTrainer_demo):
    """The demo schedule from random weights."""
    use_pretrained = False


class VesselTransferTrainer_sourceHead_demo(VesselTransferTrainer_demo):
    """The demo schedule with the head from the source's bg/vessel logits (measures the head init)."""
    head_init = "source"


class VesselTransferTrainer_frozenEncoder_demo(VesselTransferTrainer_demo):
    """The demo schedule with the encoder frozen for the first third of the epochs (5 of 15 in
    ``_frozenEncoder``; at least 1)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.freeze_encoder_epochs = max(1, self.num_epochs // 3)
