"""The winners' training levers: Boundary DoU loss values by hand, the scale augmentation's range."""
import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_vasculature.trainers.levers import BoundaryDoULoss, VesselTransferTrainer_scaleAug055


def _logits_for(p: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax foreground probability is ``p``."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], 1)


def _paper(p2, g2, inter, s, c):
    """The paper's formula with S (target voxels) and C (boundary voxels) counted by hand."""
    alpha = min(2 * (1 - (c + 1e-5) / (s + 1e-5)) - 1, 0.8)
    return (p2 + g2 - 2 * inter + 1e-5) / (p2 + g2 - (1 + alpha) * inter + 1e-5)


def test_boundary_dou_by_hand_3d_and_2d():
    loss = BoundaryDoULoss(1)
    t = torch.zeros(1, 1, 5, 5, 5)
    t[:, :, 1:4, 1:4, 1:4] = 1                 # 3x3x3 cube: S = 27, only its centre has 6 inside neighbours
    p = t[:, 0] * 0.5
    got = loss(_logits_for(p), t).item()
    assert got == pytest.approx(_paper(27 * 0.25, 27, 27 * 0.5, 27, 26), rel=1e-4)
    assert loss(_logits_for(t[:, 0]), t).item() < 1e-4          # perfect prediction
    t2 = torch.zeros(1, 1, 6, 6)
    t2[:, :, 1:5, 1:5] = 1                     # 4x4 square: S = 16, a 2x2 interior -> C = 12
    p2 = torch.full((1, 6, 6), 0.2)
    inter, pp = 16 * 0.2, 36 * 0.04
    assert loss(_logits_for(p2), t2).item() == pytest.approx(_paper(pp, 16, inter, 16, 12), rel=1e-4)
    # a square touching the image border: outside counts as background, so the border row is boundary
    t3 = torch.zeros(1, 1, 4, 4)
    t3[:, :, 0:3, 0:3] = 1                     # S = 9, interior only (1, 1) -> C = 8
    assert loss(_logits_for(p2[:, :4, :4]), t3).item() == pytest.approx(
        _paper(16 * 0.04, 9, 9 * 0.2, 9, 8), rel=1e-4)


def test_boundary_dou_leaves_out_ignored_voxels_and_has_gradients():
    rng = np.random.default_rng(0)
    t = torch.from_numpy((rng.random((2, 1, 8, 8, 8)) > 0.6).astype(np.float32))
    right = torch.where(t[:, 0] > 0, 0.99, 0.01)
    right[..., 6:] = 1 - right[..., 6:]          # wrong everywhere in the last two x columns
    logits = _logits_for(right).requires_grad_()
    ignored = t.clone()
    ignored[:, :, :, :, 6:] = 2                  # ... which are 'ignore'
    assert BoundaryDoULoss(1)(logits, t).item() > 0.2
    with_ignore = BoundaryDoULoss(1, ignore_label=2)(logits, ignored)
    assert with_ignore.item() < 0.03
    with_ignore.backward()
    assert logits.grad[..., :6].abs().sum() > 0
    assert logits.grad[..., 6:].abs().sum() == 0                 # ignored voxels get no gradient


def _spatial(transforms):
    stack, found = [transforms], []
    while stack:
        t = stack.pop()
        if isinstance(t, SpatialTransform):
            found.append(t)
        stack.extend(getattr(t, "transforms", []))
    return found


def test_scale_augmentation_reaches_a_055_zoom_in_nnunets_pipeline():
    args = dict(patch_size=(16, 32, 32), rotation_for_DA=(-0.5, 0.5), deep_supervision_scales=None,
                mirror_axes=(0, 1, 2), do_dummy_2d_data_aug=False, foreground_labels=[1])
    (stock,) = _spatial(nnUNetTrainer.get_training_transforms(**args))
    (ours,) = _spatial(VesselTransferTrainer_scaleAug055.get_training_transforms(**args))
    assert tuple(stock.scaling) == (0.7, 1.4)                   # nnU-Net's own range, unchanged
    assert ours.scaling[0] == 0.7 and ours.scaling[1] == pytest.approx(1 / 0.55) and ours.p_scaling == 0.3
    # the transform then shows objects at 0.55x: a bar of 11 voxels becomes ~6 wide at the widest zoom
    ours.p_scaling, ours.scaling, ours.p_rotation = 1.0, (1 / 0.55, 1 / 0.55), 0.0
    img = torch.zeros(1, 16, 32, 32)
    img[:, :, :, 11:22] = 1
    out = ours(image=img, segmentation=(img > 0).to(torch.int16))
    width = (out["image"][0, 8, 16] > 0.5).sum().item()
    assert 5 <= width <= 7


def test_every_trainer_is_visible_to_stock_nnunet():
    """nnU-Net finds our trainers through nnUNet_extTrainer in the ext module: each public trainer class of
    the package must be exported there."""
    import inspect

    from nnunet_vasculature.trainers import levers, short_schedule, vessel_transfer
    from nnunet_vasculature.trainers.ext import nnunet_vasculature_ext_trainers as ext
    for mod in (levers, short_schedule, vessel_transfer):
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, nnUNetTrainer) and cls.__module__ == mod.__name__ and not name.startswith("_"):
                assert getattr(ext, name, None) is cls and name in ext.__all__, name
