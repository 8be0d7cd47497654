"""The boundary with nnU-Net: the streaming predictor vs stock nnUNetPredictor for CT normalisation, a
transpose_forward and separate-z resampling; nnunet_compat's block-wise normalisation and streamed
crop/statistics vs nnU-Net's own classes; transfer weights through nnU-Net's load_pretrained_weights."""
import json
import types

import numpy as np
import pytest
import torch
from helpers.model import make_model_folder, tiny_plans
from helpers.predict import _compare, _image, _ours, _stock

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference import nnunet_compat as nc
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunet_vasculature.trainers.vessel_transfer import (
    TransferSetupError,
    VesselTransferTrainer,
    VesselTransferTrainer_sourceHead,
)


def _set_plans(folder, **changes):
    plans = json.loads((folder / "plans.json").read_text())
    plans.update(changes)
    (folder / "plans.json").write_text(json.dumps(plans))
    return plans


# ---- streaming predictor vs stock nnUNetPredictor ------------------------------------------------------
def test_ct_normalisation_matches_stock(tmp_path):
    folder = make_model_folder(tmp_path / "m", normalization="CTNormalization")
    props = tiny_plans()["foreground_intensity_properties_per_channel"]["0"]
    img = _image((30, 36, 32), seed=6)
    img = ((img - img.mean()) / img.std() * 6500 + 15000).astype(np.float32)
    # both clipping bounds of the plans' foreground percentiles are reached
    assert (img < props["percentile_00_5"]).mean() > 0.01 and (img > props["percentile_99_5"]).mean() > 0.01
    sp = (63.08, 63.08, 63.08)                  # resampled both ways: the normalised range clips the cubic
    _compare(_ours(folder, img, sp, (0,), False), _stock(folder, img, sp, (0,), False))


def test_transpose_forward_matches_stock_and_moving_z_is_refused(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    _set_plans(folder, transpose_forward=[0, 2, 1], transpose_backward=[0, 2, 1])
    img = _image((30, 44, 36), seed=7)
    sp = (50.0, 55.0, 45.0)                     # the spacing is transposed too: y and x are resampled differently
    _compare(_ours(folder, img, sp, (0,), False), _stock(folder, img, sp, (0,), False))
    _set_plans(folder, transpose_forward=[1, 0, 2], transpose_backward=[1, 0, 2])
    with pytest.raises(UserError, match=r"transpose_forward \[1, 0, 2\] \(z must stay first\)"):
        StreamingPredictor(PredictionOptions.of(folder, [0]), torch.device("cpu"))


def test_separate_z_resampling_matches_stock(tmp_path):
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
    sp, model_sp = (200.0, 60.0, 60.0), (50.0, 50.0, 50.0)
    plans = tiny_plans(spacing=model_sp)["configurations"]["3d_fullres"]
    # nnU-Net itself resamples the data (cubic in-plane, nearest along z) and the probabilities (linear
    # in-plane, nearest along z) separately along z
    for key, current, new in (("resampling_fn_data_kwargs", sp, model_sp),
                              ("resampling_fn_probabilities_kwargs", model_sp, sp)):
        assert plans[key]["order_z"] == 0
        assert determine_do_sep_z_and_axis(plans[key]["force_separate_z"], current, new) == (True, 0)
    folder = make_model_folder(tmp_path / "m", spacing=model_sp)
    img = _image((16, 36, 32), seed=8)
    _compare(_ours(folder, img, sp, (0,), False), _stock(folder, img, sp, (0,), False))


# ---- normalisation and cropping ------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["CTNormalization", "NoNormalization"])
def test_pointwise_normalisation_is_nnunets_class_on_a_block(scheme):
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes
    props = tiny_plans()["foreground_intensity_properties_per_channel"]["0"]
    block = (np.random.default_rng(1).random((5, 12, 10)) * 34000).astype(np.float32)
    keep = block.copy()
    ours = nc.make_normalizer(scheme, props, {})(block)
    np.testing.assert_array_equal(block, keep)             # the source's block is not normalised in place
    ref = getattr(schemes, scheme)(use_mask_for_norm=False, intensityproperties=props).run(block.copy())
    assert ours.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_streamed_crop_and_zscore_equal_nnunets_on_the_whole_volume():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    img = _image((23, 20, 18), seed=3)
    img[:4] = 0
    img[:, -3:] = 0
    img[:, :, :2] = 0
    img[10:12, 8:11, 5:9] = 0                               # a hole: zeros inside the crop count
    bbox, stats = nc.nonzero_bbox_and_stats(lambda a, b: img[a:b], img.shape, block=5)
    cropped, _, ref_bbox = crop_to_nonzero(img[None].copy())
    assert [list(b) for b in bbox] == [[int(v) for v in b] for b in ref_bbox]
    crop = img[tuple(slice(a, b) for a, b in bbox)]
    norm = nc.make_normalizer("ZScoreNormalization", None, stats)
    ours = np.concatenate([norm(crop[z:z + 5]) for z in range(0, len(crop), 5)])
    ref = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(cropped[0].copy())
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nc.normalized_range(norm, stats), (ref.min(), ref.max()), atol=1e-4)
    assert nc.nonzero_bbox_and_stats(lambda a, b: np.zeros((b - a, 4, 4), np.float32), (6, 4, 4)) == (None, None)


# ---- transfer weights ----------------------------------------------------------------------------------
class _Code:
    """A class in a checkpoint: code that a weights-only load refuses."""


def _net(num_classes, features=(4, 8, 16)):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = tiny_plans(features=features)["configurations"]["3d_fullres"]["architecture"]
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  1, num_classes, allow_init=True, deep_supervision=False)


@pytest.mark.parametrize("trainer_cls", [VesselTransferTrainer, VesselTransferTrainer_sourceHead])
def test_transfer_weights_through_nnunets_loader(tmp_path, trainer_cls):
    torch.manual_seed(0)
    source = _net(3).state_dict()
    path = tmp_path / "w.pth"
    torch.save({"network_weights": source, "head_channels": [0, 2]}, path)
    trainer = object.__new__(trainer_cls)       # loading needs none of a trainer's set-up
    trainer.network, trainer.is_ddp = _net(2), False
    trainer.plans_manager = types.SimpleNamespace(plans_name="nnUNetPlans_Task008")
    trainer.find_pretrained = lambda: str(path)
    trainer.print_to_log_file = lambda *a, **k: None
    initial = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.load_transfer_weights()
    assert trainer.pretrained_loaded_from == str(path)
    for key, value in trainer.network.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, source[key]), key
        elif trainer_cls.head_init == "source":           # the source's background and vessel channels
            assert torch.equal(value, source[key][[0, 2]]), key
        else:                                               # the network's own initialisation
            assert torch.equal(value, initial[key]), key
    # another architecture: nnU-Net's key/shape check, reported against the plans
    trainer.network = _net(2, features=(4, 8, 32))
    with pytest.raises(TransferSetupError, match="do not match plans 'nnUNetPlans_Task008'"):
        trainer.load_transfer_weights()
    # a file carrying code never reaches nnU-Net's unrestricted torch.load: one line naming the file
    torch.save({"network_weights": source, "extra": _Code()}, path)
    with pytest.raises(TransferSetupError, match=f"{path}: refused"):
        trainer.load_transfer_weights()
