"""The trainer's learning-rate schedule and encoder freezing, without a dataset: the schedule against
nnU-Net's own schedulers, the freezing inside a real 2-process DistributedDataParallel group (gloo, CPU)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_vasculature.trainers.vessel_transfer import (
    WarmupPolyLRScheduler,
    encoder_param_groups,
    freeze_encoder_group,
)

FREEZE = 2          # epochs with the encoder frozen
EPOCHS = 4


def _tiny_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(input_channels=1, n_stages=2, features_per_stage=[4, 8], conv_op=torch.nn.Conv3d,
                         kernel_sizes=3, strides=[1, 2], n_conv_per_stage=1, num_classes=2,
                         n_conv_per_stage_decoder=1, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         deep_supervision=False)


def _sgd(net):
    return torch.optim.SGD(encoder_param_groups(net), 0.1, momentum=0.99, nesterov=True)


def test_schedule_warms_up_then_follows_nnunets_poly_decay():
    net = _tiny_unet()
    ours_opt, ref_opt = _sgd(net), torch.optim.SGD(net.parameters(), 0.1)
    ours = WarmupPolyLRScheduler(ours_opt, 0.1, max_steps=10, warmup=2)
    ref = PolyLRScheduler(ref_opt, 0.1, max_steps=8)
    lrs = []
    for epoch in range(10):
        ours.step(epoch)
        lrs.append(ours_opt.param_groups[1]["lr"])
        assert ours_opt.param_groups[0]["lr"] == lrs[-1]           # both groups follow the schedule
        if epoch >= 2:     # after the warm-up: nnU-Net's poly decay, shifted by the warm-up
            ref.step(epoch - 2)
            assert lrs[-1] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
    assert lrs[:2] == pytest.approx([0.1 / 3, 0.2 / 3])             # linear: (epoch + 1) / (warmup + 1)
    assert lrs[2] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs[2:], lrs[3:]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)                     # same initial weights on both ranks
    net = _tiny_unet()
    opt = _sgd(net)                          # groups are made before the wrap, as nnU-Net's initialize does
    sched = WarmupPolyLRScheduler(opt, 0.1, EPOCHS, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    enc = [p.detach().clone() for p in net.encoder.parameters()]
    dec = [p.detach().clone() for p in opt.param_groups[1]["params"]]
    gen = torch.Generator().manual_seed(rank)
    history = []
    for epoch in range(EPOCHS):
        sched.step(epoch)
        freeze_encoder_group(opt, epoch < FREEZE, epoch == FREEZE)
        for _ in range(2):                   # two iterations per epoch: DDP fails on the second if broken
            x = torch.randn(2, 1, 8, 8, 8, generator=gen)
            y = torch.randint(0, 2, (2, 8, 8, 8), generator=gen)
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        enc_moved = max((p - q).abs().max().item() for p, q in zip(net.encoder.parameters(), enc))
        dec_moved = max((p - q).abs().max().item() for p, q in zip(opt.param_groups[1]["params"], dec))
        history.append((enc_moved, dec_moved, opt.param_groups[0]["lr"]))
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.save({"history": history, "weights": flat}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_encoder_freezing_under_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # the ranks stayed in sync (DDP averaged the gradients of different batches)
    assert torch.equal(r0["weights"], r1["weights"])
    h = r0["history"]
    for epoch in range(FREEZE):
        enc_moved, dec_moved, enc_lr = h[epoch]
        assert enc_moved == 0.0 and enc_lr == 0.0, "encoder changed while frozen"
        assert dec_moved > 0.0
    assert h[FREEZE][0] > 0.0 and h[FREEZE][2] > 0.0, "encoder not trained after unfreezing"


@pytest.mark.parametrize("trainer", ["VesselTransferTrainer_demo", "VesselScratchTrainer_demo",
                                     "VesselTransferTrainer_boundaryDoU_demo", "nnUNetTrainer_demo"])
def test_demo_trainers_skip_the_final_validation_only_when_asked(trainer, monkeypatch):
    """$nnUNet_vasculature_demo_validation=0 (set by the demos and the benchmarks, which score their own held-out
    kidney) skips nnU-Net's final validation of every demo-length trainer; unset, nnU-Net's own runs."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_vasculature.trainers.common import VALIDATION_ENV
    from nnunet_vasculature.trainers.ext import nnunet_vasculature_ext_trainers as ext
    calls, logged = [], []
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, save=False: calls.append(save))
    obj = object.__new__(getattr(ext, trainer))        # no dataset needed: only the hook is exercised
    obj.print_to_log_file = lambda *a, **k: logged.append(a)
    monkeypatch.setenv(VALIDATION_ENV, "0")
    obj.perform_actual_validation(True)
    assert calls == [] and "skipped" in str(logged)
    monkeypatch.delenv(VALIDATION_ENV)
    obj.perform_actual_validation(True)
    assert calls == [True]


def test_a_one_epoch_schedule_steps_without_a_warm_up():
    """``nnUNet_vasculature_demo_schedule=1x2`` (one epoch, one warm-up epoch) divided by zero in the decay."""
    import torch

    from nnunet_vasculature.trainers.vessel_transfer import WarmupPolyLRScheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = WarmupPolyLRScheduler(opt, 0.01, max_steps=1, warmup=1)
    sched.step(0)
    assert sched.get_last_lr() == [0.01]          # the poly decay's first step: the initial rate
