"""A stand-in for Task008_HepaticVessel when the real download is not at hand (demo, CI).

A small v1-topology U-Net is trained for a few minutes on synthesized CT-like volumes with two
foreground classes, vessel (1) and tumour (2), and saved in the exact v1 download layout, so that the
real import path (``import-pretrained``) is what the demo runs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from nnunet_vasculature.dataset_conversion.synthesize import _segment_field, grow_tree
from nnunet_vasculature.demo.v1_export import v1_plans, v1_state_dict, write_v1_zip
from nnunet_vasculature.pretrained.convert import architecture_from_v1, build_network
from nnunet_vasculature.pretrained.v1_checkpoint import V1Model

PATCH = (32, 64, 64)
POOL = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]   # anisotropic first stage, as in Task008


def ct_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (40, 96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like liver patch: contrast-enhanced vessel trees (1) and hypodense tumours (2)."""
    extent = np.array(shape, dtype=float)
    tree = grow_tree(rng, extent, root_radius=3.5, min_radius=0.9, n_roots=3, missing_fraction=0.0)
    sd = _segment_field(np.zeros(3), shape, 1.0, tree, False, 2.0)
    seg = (sd <= 0).astype(np.uint8)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij", sparse=True)
    tumour = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):
        c = rng.uniform(0.2, 0.8, 3) * extent
        r = rng.uniform(4, 9)
        tumour |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    seg[tumour] = 2
    img = 100 + rng.normal(0, 18, shape) + 110 / (1 + np.exp(np.clip(sd / 0.6, -30, 30))) - 45 * tumour
    return img.astype(np.float32), seg


def train_standin(out_zip: Path, iterations: int = 300, seed: int = 0, log: Callable[[str], object] = print) -> Path:
    """Train the stand-in source model on CPU and write it as a v1 Task008-layout zip."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    plans = v1_plans(PATCH, POOL, KERNELS, (1.5, 0.8, 0.8), num_classes=3, base_num_features=8)
    arch = architecture_from_v1(V1Model(Path(out_zip), "3d_fullres", "Task008_HepaticVessel", "nnUNetTrainerV2",
                                        ["0"], plans, 0, []))
    net = build_network(arch, 1, 3)
    vols = [ct_volume(rng) for _ in range(6)]
    vols = [((img - img.mean()) / img.std(), seg) for img, seg in vols]
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    weights = torch.tensor([1.0, 4.0, 2.0])
    t0, losses = time.time(), []
    net.train()
    for it in range(iterations):
        xs, ys = [], []
        for _ in range(2):
            img, seg = vols[rng.integers(len(vols))]
            o = [rng.integers(0, s - p + 1) for s, p in zip(img.shape, PATCH)]
            sl = tuple(slice(a, a + p) for a, p in zip(o, PATCH))
            xs.append(img[sl])
            ys.append(seg[sl])
        x = torch.from_numpy(np.stack(xs))[:, None]
        y = torch.from_numpy(np.stack(ys)).long()
        loss = nn.functional.cross_entropy(net(x), y, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (it + 1) % max(1, iterations // 5) == 0:
            log(f"  stand-in source model: iteration {it + 1}/{iterations}, loss {np.mean(losses[-20:]):.3f}")
    net.eval()
    write_v1_zip(Path(out_zip), {0: v1_state_dict(net)}, plans)
    log(f"  stand-in source model trained in {time.time() - t0:.0f} s -> {out_zip}")
    return Path(out_zip)
