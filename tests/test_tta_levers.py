"""Rotation / permutation TTA and test-time up-scaling of the streaming predictor, against stock nnU-Net
run on rotated, permuted or finer-spaced inputs; the refusals; the CLI flags; distributed = one process."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from helpers.model import make_model_folder
from helpers.predict import _compare, _image, _kaggle_kidney, _ours, _stock

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunet_vasculature.inference.tta import ROTATIONS, TileTTA, Transform

SP = (50.0, 50.0, 50.0)


def _logit_mean(probs):
    """Foreground probability of the mean of the two-class logits (nnU-Net averages logits, not
    probabilities; with two classes the softmax depends only on the logit difference log(p / (1 - p)))."""
    p = np.clip(np.stack(probs).astype(np.float64), 1e-7, 1 - 1e-7)
    return 1 / (1 + np.exp(-np.mean(np.log(p) - np.log1p(-p), axis=0)))


def _predictor(folder, tta, **options):
    return StreamingPredictor(PredictionOptions.of(folder, [0], tta=tta, **options), torch.device("cpu"))


def test_rotation_steps_are_torch_rot90():
    x = torch.arange(2 * 3 * 3.).reshape(1, 1, 2, 3, 3)
    for k, step in enumerate(ROTATIONS):
        t = Transform((step,))
        assert torch.equal(t.apply(x), torch.rot90(x, k, (3, 4)))
        assert torch.equal(t.invert(t.apply(x)), x)


@pytest.mark.parametrize("tta", [True, False])
def test_rotations_equal_stock_on_rotated_volumes(tmp_path, tta):
    """The volume is one tile wide in y and x (the patch), so stock places the same tiles on the rotated
    volumes and only the network sees rotated input; with mirroring the 180° and 270° rotations are
    mirrored copies of 0° and 90° and are not predicted again (2 passes), without it all 4 are."""
    folder = make_model_folder(tmp_path / "m")
    img = _image((22, 32, 32), seed=3)
    ref = _logit_mean([np.rot90(_stock(folder, np.ascontiguousarray(np.rot90(img, k, (1, 2))), SP, (0,), tta), -k,
                                (1, 2)) for k in range(4)])
    pred = _predictor(folder, tta, tta_rotations=True)
    assert pred.tta.passes == (2 if tta else 4)
    ours = _ours(None, img, SP, None, tta, predictor=pred)
    _compare(ours, ref)
    assert np.abs(ours - _ours(folder, img, SP, (0,), tta)).max() > 0.05     # the rotations changed something


def test_permutations_equal_stock_on_permuted_volumes(tmp_path):
    folder = make_model_folder(tmp_path / "m", patch=(20, 20, 20))
    img = _image((20, 20, 20), seed=4)
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    ref = _logit_mean([np.transpose(_stock(folder, np.ascontiguousarray(np.transpose(img, p)), SP, (0,), True),
                                    np.argsort(p)) for p in perms])
    pred = _predictor(folder, True, tta_permutations=True, tta_rotations=True)
    assert pred.tta.passes == 6          # rotations are mirrored permutations: nothing more to predict
    ours = _ours(None, img, SP, None, True, predictor=pred)
    _compare(ours, ref)
    assert np.abs(ours - _ours(folder, img, SP, (0,), True)).max() > 0.05


def test_weights_without_full_mirroring():
    """Mirroring only along z: a 180° rotation is no mirror any more, each rotation counts once."""
    tta = TileTTA((8, 16, 16), SP, (0,), rotations=True)
    assert tta.passes == 4 and [w for _, w in tta.transforms] == [0.25] * 4
    assert TileTTA((8, 16, 16), SP, (0, 1, 2)).passes == 1


def test_refusals(tmp_path):
    with pytest.raises(UserError, match=r"--tta_rotations needs a patch square in \(y, x\)") as e:
        TileTTA((16, 32, 24), SP, None, rotations=True, where="m")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="--tta_permutations needs a cubic patch and isotropic spacing"):
        TileTTA((16, 16, 16), (80.0, 50.0, 50.0), None, permutations=True)
    with pytest.raises(UserError, match="--tta_permutations needs a cubic patch"):
        TileTTA((16, 32, 32), SP, None, permutations=True)
    from nnunet_vasculature.cli import main
    folder = make_model_folder(tmp_path / "m", patch=(16, 32, 24))
    kidney = _kaggle_kidney(tmp_path / "k", _image((8, 20, 20)))
    out = tmp_path / "p.zarr"
    args = ["predict", "-i", str(kidney), "-o", str(out), "-m", str(folder), "-device", "cpu"]
    assert main([*args, "--tta_rotations"]) == 2 and not out.exists()
    assert main([*args, "--tta_scale", "0.5"]) == 2 and not out.exists()


@pytest.mark.parametrize("scale,spacing", [(2.0, SP), (1.5, (63.08,) * 3)])
def test_scale_equals_stock_with_finer_plans(tmp_path, scale, spacing):
    """--tta_scale F is stock nnU-Net with the same weights and the plans' spacing divided by F."""
    folder = make_model_folder(tmp_path / "m")
    finer = tmp_path / "finer"
    shutil.copytree(folder, finer)
    plans = json.loads((finer / "plans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    cfg["spacing"] = [s / scale for s in cfg["spacing"]]
    (finer / "plans.json").write_text(json.dumps(plans))
    img = _image((18, 22, 20), seed=6)
    ours = _ours(None, img, spacing, None, False, predictor=_predictor(folder, False, tta_scale=scale))
    _compare(ours, _stock(finer, img, spacing, (0,), False))
    assert np.abs(ours - _ours(folder, img, spacing, (0,), False)).max() > 0.05


def test_cli_flags_and_distributed_equal_single_process(tmp_path):
    from nnunet_vasculature.cli import main
    from nnunet_vasculature.inference.distributed import predict_distributed
    folder = make_model_folder(tmp_path / "m")
    img = _image((20, 32, 32), seed=8)
    kidney = _kaggle_kidney(tmp_path / "k", img)
    one = tmp_path / "one.zarr"
    assert main(["predict", "-i", str(kidney), "-o", str(one), "-m", str(folder), "-device", "cpu", "--disable_tta",
                 "--tta_rotations", "--tta_scale", "1.5"]) == 0
    a = zarr.open_group(str(one), mode="r")["kidney_5"]
    model = a.attrs["source"]["model"]
    assert model["tta_rotations"] is True and model["tta_scale"] == 1.5 and "tta_permutations" not in model
    ref = _ours(None, img.astype(np.uint16).astype(np.float32), (50.28,) * 3, None, False,
                predictor=_predictor(folder, False, tta_rotations=True, tta_scale=1.5))
    np.testing.assert_array_equal(a[:], np.rint(ref * 255).astype(np.uint8))
    many = tmp_path / "many.zarr"
    options = PredictionOptions.of(folder, [0], tta=False, tta_rotations=True, tta_scale=1.5)
    assert options.to_json() == model
    # the workers' code path with a worker thread in this process (a process-based cluster: test_distributed.py)
    from distributed import LocalCluster
    threads = torch.get_num_threads()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        try:
            predict_distributed(kidney, many, options, "cpu", slab_planes=8, retries=0,
                                scheduler_address=cluster.scheduler_address)
        finally:
            torch.set_num_threads(threads)
    b = zarr.open_group(str(many), mode="r")["kidney_5"]
    assert b.attrs["complete"]
    np.testing.assert_array_equal(b[:], a[:])
    with pytest.raises(UserError, match="with other settings"):       # the options are in the parameter hash
        predict_distributed(kidney, many, replace(options, tta_permutations=True), "cpu", workers=1, slab_planes=8)
