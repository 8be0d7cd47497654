"""The stand-in for Task008_HepaticVessel when the real download is not at hand (demo, CI).

A small v1-topology U-Net (the pooling and anisotropic first-stage kernels of a CT plan, 8 base
features) is trained to convergence on CPU on the synthetic source task of :mod:`.source_task`
(liver CT in HU, vessels 1, tumours 2), scored on held-out source cases, and written in the v1
download layout, so that the real import path (``import-pretrained``) is what the demo runs.

``nnunet-vasculature standin --iterations 250 -o FILE`` builds it; the package ships the result
(``demo/data/Task008_standin.zip`` and its ``.json`` record: seeds, training curve, held-out score,
sha256 of the zip), which ``demo sennet`` uses without training anything but the fine-tune.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_vasculature.demo.source_task import CLASSES, SHAPE, SPACING_MM, ct_normalisation, normalise_ct, source_case
from nnunet_vasculature.demo.v1_export import v1_plans, v1_state_dict, write_v1_zip
from nnunet_vasculature.errors import atomic_file
from nnunet_vasculature.pretrained.convert import architecture_from_v1, build_network
from nnunet_vasculature.pretrained.v1_checkpoint import V1Model

PATCH = (32, 64, 64)                  # the plans' patch (the fine-tune's)
TRAIN_PATCH = (24, 48, 48)            # training patches here: the network is fully convolutional, smaller is faster
POOL = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]   # anisotropic first stage, as in Task008
BASE_FEATURES = 8
N_TRAIN, N_HELD_OUT, N_CURVE = 32, 8, 4    # N_CURVE held-out cases scored during training
TRAIN_SPLIT, HELD_OUT_SPLIT = 0, 1        # case seeds are [seed, split, index]
DEFAULT_ITERATIONS = 250
SHIPPED = "Task008_standin.zip"


def shipped_standin() -> tuple[Path, dict]:
    """The stand-in shipped in the package: (zip path, its record). Raises FileNotFoundError if absent."""
    from importlib.resources import files
    data = files("nnunet_vasculature.demo") / "data"
    zpath = Path(str(data / SHIPPED))
    record = Path(str(data / SHIPPED.replace(".zip", ".json")))
    if not zpath.is_file() or not record.is_file():
        raise FileNotFoundError(f"{zpath}: the shipped stand-in source model is missing")
    return zpath, json.loads(record.read_text())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """2|P&R| / (|P| + |R|), 1.0 when both are empty."""
    denom = int(pred.sum()) + int(ref.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / denom


def predict_case(net: nn.Module, image: np.ndarray) -> np.ndarray:
    """Argmax labels of one whole normalised case (its shape is divisible by the pooling)."""
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(image))[None, None])
    out = out[0] if isinstance(out, (list, tuple)) else out
    return out[0].argmax(0).numpy().astype(np.uint8)


def score_case(net: nn.Module, image: np.ndarray, seg: np.ndarray) -> dict:
    """Per-class Dice (vessel, tumour) of the network on one normalised case."""
    pred = predict_case(net, image)
    return {f"dice_{CLASSES[c]}": dice(pred == c, seg == c) for c in (1, 2)}


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - batch soft Dice of the foreground classes (nnU-Net's ``MemoryEfficientSoftDiceLoss`` idea)."""
    p = torch.softmax(logits, 1)[:, 1:]
    t = nn.functional.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].float()
    axes = (0, 2, 3, 4)
    inter = (p * t).sum(axes)
    return 1 - ((2 * inter + 1e-5) / (p.sum(axes) + t.sum(axes) + 1e-5)).mean()


def _batch(rng: np.random.Generator, cases: Sequence[tuple[np.ndarray, np.ndarray]], n: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random patches; a third centred on a foreground voxel (as nnU-Net oversamples); random flips
    in-plane and a random intensity scale."""
    xs, ys = [], []
    for k in range(n):
        img, seg = cases[rng.integers(len(cases))]
        fg = np.argwhere(seg > 0) if k % 3 == 2 else np.empty((0, 3))
        if len(fg):
            c = fg[rng.integers(len(fg))]
            o = [int(np.clip(ci - p // 2, 0, s - p)) for ci, s, p in zip(c, img.shape, TRAIN_PATCH)]
        else:
            o = [int(rng.integers(0, s - p + 1)) for s, p in zip(img.shape, TRAIN_PATCH)]
        sl = tuple(slice(a, a + p) for a, p in zip(o, TRAIN_PATCH))
        x, y = img[sl] * rng.uniform(0.9, 1.1), seg[sl]
        for ax in (1, 2):
            if rng.random() < 0.5:
                x, y = np.flip(x, ax), np.flip(y, ax)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys)).long()


def _progress_png(curve: list[dict]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    it = [c["iteration"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(it, [c["train_loss"] for c in curve], label="train loss")
    ax.plot(it, [c["held_out_loss"] for c in curve], label="held-out loss")
    ax.set_xlabel("iteration")
    ax2 = ax.twinx()
    ax2.plot(it, [c["held_out_dice_vessel"] for c in curve], "g--", label="held-out vessel Dice")
    ax2.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=3, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70)
    plt.close(fig)
    return buf.getvalue()


def build_source(out_zip: Path, seed: int = 0, iterations: int = DEFAULT_ITERATIONS, evaluations: int = 12,
                 log: Callable[[str], object] = print) -> dict:
    """Train the stand-in on the synthetic source task, score it on held-out source cases and write
    ``out_zip`` (v1 Task008 download layout) plus ``<out_zip stem>.json`` (the record). Returns the record."""
    t0 = time.time()
    out_zip = Path(out_zip)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    raw = [source_case([seed, TRAIN_SPLIT, i]) for i in range(N_TRAIN)]
    props = ct_normalisation([r[0] for r in raw], [r[1] for r in raw])
    train = [(normalise_ct(img, props), seg) for img, seg in raw]
    held_seeds = [[seed, HELD_OUT_SPLIT, i] for i in range(N_HELD_OUT)]
    held = [(normalise_ct(img, props), seg) for img, seg in (source_case(s) for s in held_seeds)]
    plans = v1_plans(PATCH, POOL, KERNELS, SPACING_MM, num_classes=3, base_num_features=BASE_FEATURES,
                     intensity_properties=props)
    arch = architecture_from_v1(V1Model(out_zip, "3d_fullres", "Task008_HepaticVessel", "nnUNetTrainerV2",
                                        ["0"], plans, 0, []))
    net = build_network(arch, 1, 3)
    with torch.no_grad():   # v1's Generic_UNet has no biases there: keep them at 0 so the export is exact
        for m in (*net.decoder.transpconvs, *net.decoder.seg_layers):
            m.bias.zero_()
            m.bias.requires_grad_(False)
    lr0 = 3e-3
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr0, weight_decay=3e-5)
    eval_every = max(1, iterations // max(1, evaluations))
    curve, window = [], []
    for it in range(iterations):
        net.train()
        for g in opt.param_groups:
            g["lr"] = lr0 * (1 - it / iterations) ** 0.9
        x, y = _batch(rng, train, 2)
        logits = net(x)
        loss = nn.functional.cross_entropy(logits, y) + _soft_dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (it + 1) % eval_every == 0 or it + 1 == iterations:
            curve.append({"iteration": it + 1, "train_loss": float(np.mean(window)), **_evaluate(net, held[:N_CURVE]),
                          "minutes": round((time.time() - t0) / 60, 2)})
            window = []
            c = curve[-1]
            log(f"  source model: iteration {it + 1}/{iterations}, train loss {c['train_loss']:.3f}, held-out loss "
                f"{c['held_out_loss']:.3f}, held-out Dice vessel {c['held_out_dice_vessel']:.3f} tumour "
                f"{c['held_out_dice_tumour']:.3f} ({c['minutes']:.1f} min)")
    plot_stuff = ([np.float64(c["train_loss"]) for c in curve], [np.float64(c["held_out_loss"]) for c in curve], [],
                  [np.float64(c["held_out_dice_vessel"]) for c in curve])
    write_v1_zip(out_zip, {0: v1_state_dict(net)}, plans, plot_stuff=plot_stuff, epoch=len(curve),
                 fold_files={"progress.png": _progress_png(curve)})
    # the score of what was written, read back through the import path
    from nnunet_vasculature.pretrained import load_v1_as_v2
    shipped = load_v1_as_v2(out_zip)
    per_case = [{"seed": s, **score_case(shipped, img, seg)} for s, (img, seg) in zip(held_seeds, held)]
    record = {
        "model": out_zip.name, "sha256": sha256(out_zip), "bytes": out_zip.stat().st_size,
        "command": f"nnunet-vasculature standin -o {out_zip.name} --seed {seed} --iterations {iterations}",
        "seed": seed, "iterations": iterations, "batch_size": 2, "train_patch_size": list(TRAIN_PATCH),
        "plans_patch_size": list(PATCH),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "source_task": {"generator": "nnunet_vasculature.demo.source_task.source_case", "shape": list(SHAPE),
                        "spacing_mm": list(SPACING_MM), "classes": {str(k): v for k, v in CLASSES.items()},
                        "train_cases": f"source_case([seed, {TRAIN_SPLIT}, i]) for i < {N_TRAIN}",
                        "intensity_properties": props},
        "held_out": {"cases": per_case,
                     "mean_dice_vessel": float(np.mean([c["dice_vessel"] for c in per_case])),
                     "mean_dice_tumour": float(np.mean([c["dice_tumour"] for c in per_case])),
                     "how": "argmax of one whole-case forward pass on source_case(seed), normalised with "
                            "intensity_properties (v1 CT normalisation)"},
        "curve": curve, "curve_cases": f"the first {N_CURVE} held-out cases",
        "minutes": round((time.time() - t0) / 60, 1),
        "built_with": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                       "torch_threads": torch.get_num_threads()},
    }
    with atomic_file(record_path(out_zip)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    log(f"  source model: held-out Dice vessel {record['held_out']['mean_dice_vessel']:.3f}, tumour "
        f"{record['held_out']['mean_dice_tumour']:.3f}; {record['minutes']} min -> {out_zip}")
    return record


def record_path(zip_path: Path) -> Path:
    """Where the record of a stand-in zip lives: beside it, ``<stem>.json``."""
    return Path(zip_path).with_suffix(".json")


def _evaluate(net: nn.Module, held: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    net.eval()
    losses, dv, dt = [], [], []
    with torch.no_grad():
        for img, seg in held:
            logits = net(torch.from_numpy(img)[None, None])
            y = torch.from_numpy(seg)[None].long()
            losses.append((nn.functional.cross_entropy(logits, y) + _soft_dice_loss(logits, y)).item())
            pred = logits[0].argmax(0).numpy()
            dv.append(dice(pred == 1, seg == 1))
            dt.append(dice(pred == 2, seg == 2))
    return {"held_out_loss": float(np.mean(losses)), "held_out_dice_vessel": float(np.mean(dv)),
            "held_out_dice_tumour": float(np.mean(dt))}
