"""The shipped stand-in source model (nnunet_vasculature/demo/data): a v1 download by the documented 2020
layout facts (benchmarks/common.py: write_task008_zip), weights that the real v1 Generic_UNet loads, and a recorded
source-task score that the shipped weights reproduce on a regenerated held-out case."""
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from benchmarks.common import V1_PLANS_ID as PLANS_ID
from benchmarks.common import V1_TASK as TASK
from benchmarks.common import V1_TRAINER as TRAINER
from benchmarks.common import real_generic_unet
from nnunet_vasculature.cli import main as cli_main
from nnunet_vasculature.demo.source_task import SPACING_MM, source_case, vessel_distance
from nnunet_vasculature.demo.standin import record_path, sha256, shipped_standin
from nnunet_vasculature.pretrained import load_v1_as_v2
from nnunet_vasculature.pretrained.v1_checkpoint import _load_state_dict

BASE = f"3d_fullres/{TASK}/{TRAINER}__{PLANS_ID}"


@pytest.fixture(scope="module")
def shipped():
    return shipped_standin()


def _plans(zpath):
    with zipfile.ZipFile(zpath) as zf:
        return pickle.loads(zf.read(f"{BASE}/plans.pkl"))


def test_shipped_zip_has_the_2020_layout(shipped):
    zpath, record = shipped
    assert zpath.stat().st_size < 4 * 2 ** 20                 # "a few MB at most"
    assert record["sha256"] == sha256(zpath)                   # the record describes this very file
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        # members start at the configuration folder, no nnUNet/ prefix (DOMAIN.md 5)
        assert all(n.startswith(f"{BASE}/") for n in names), sorted(names)
        for n in ("plans.pkl", "postprocessing.json", "fold_0/model_final_checkpoint.model",
                  "fold_0/model_final_checkpoint.model.pkl", "fold_0/debug.json", "fold_0/progress.png"):
            assert f"{BASE}/{n}" in names, n
        ckpt = zf.read(f"{BASE}/fold_0/model_final_checkpoint.model")
        meta = pickle.loads(zf.read(f"{BASE}/fold_0/model_final_checkpoint.model.pkl"))
        json.loads(zf.read(f"{BASE}/postprocessing.json"))
    # torch legacy (non-zip) serialisation, pickle protocol 2, as torch <= 1.4 wrote it
    assert not ckpt.startswith(b"PK") and ckpt[:2] == b"\x80\x02"
    payload = torch.load(io.BytesIO(ckpt), weights_only=False)
    assert {"epoch", "state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "plot_stuff"} <= set(payload)
    assert len(payload["plot_stuff"]) == 4 and len(payload["plot_stuff"][0]) == len(record["curve"])
    assert set(meta) >= {"init", "name", "class", "plans"} and meta["name"] == TRAINER
    plans = meta["plans"]
    assert plans["num_classes"] == 2 and plans["num_modalities"] == 1 and plans["modalities"] == {0: "CT"}
    assert plans["normalization_schemes"][0] == "CT"
    assert list(plans["plans_per_stage"][0]["current_spacing"]) == list(SPACING_MM)


def test_shipped_weights_load_into_real_generic_unet_and_match_the_import(shipped):
    """The real v1 network (nnunet==1.7.1) takes the shipped state_dict strictly, and the imported v2
    network gives its logits: the import path the demo runs reads the file as v1 would."""
    zpath, _ = shipped
    stage = _plans(zpath)["plans_per_stage"][0]
    with zipfile.ZipFile(zpath) as zf:
        sd = _load_state_dict(zf.read(f"{BASE}/fold_0/model_final_checkpoint.model"), "shipped")
    real = real_generic_unet(stage["pool_op_kernel_sizes"], stage["conv_kernel_sizes"],
                             _plans(zpath)["base_num_features"], seed=0)
    real.load_state_dict(sd, strict=True)
    ours = load_v1_as_v2(zpath)
    x = torch.randn(1, 1, *stage["patch_size"])
    with torch.no_grad():
        assert torch.max(torch.abs(ours(x) - real.eval()(x)[0])).item() <= 1e-4


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_recorded_source_score_is_reproduced_from_the_shipped_weights(shipped):
    """Regenerate one held-out source case from its recorded seed, normalise it with the intensity
    properties in the shipped plans (v1 CT scheme, written out here), predict with the imported network
    and recompute the vessel Dice with plain numpy."""
    zpath, record = shipped
    case = record["held_out"]["cases"][0]
    img, seg = source_case(case["seed"])
    props = _plans(zpath)["dataset_properties"]["intensityproperties"][0]
    x = (np.clip(img, props["percentile_00_5"], props["percentile_99_5"]) - props["mean"]) / props["sd"]
    net = load_v1_as_v2(zpath)
    with torch.no_grad():
        pred = net(torch.from_numpy(x.astype(np.float32))[None, None])[0].argmax(0).numpy()
    again = _dice(pred == 1, seg == 1)
    assert abs(again - case["dice_vessel"]) <= 0.005, (again, case)
    # it learned the source task (a fresh network scores ~0.02-0.03 here), and the score was recorded from the
    # held-out cases, not the training ones
    assert record["held_out"]["mean_dice_vessel"] >= 0.5
    assert len(record["held_out"]["cases"]) == 8 and record["curve"][-1]["iteration"] == record["iterations"]
    # a held-out seed is not a training seed
    assert case["seed"][1] == 1 and "[seed, 0, i]" in record["source_task"]["train_cases"]


def test_source_case_is_ct_like_and_a_function_of_its_seed():
    img, seg = source_case([5, 1, 0])
    img2, seg2 = source_case([5, 1, 0])
    assert np.array_equal(img, img2) and np.array_equal(seg, seg2)
    assert not np.array_equal(seg, source_case([5, 1, 1])[1])
    assert set(np.unique(seg)) <= {0, 1, 2} and (seg == 1).any()
    # Hounsfield units: air outside the body, contrast-filled vessels brighter than the parenchyma
    assert img.min() < -800 and 150 < np.median(img[seg == 1]) < 260
    assert np.median(img[seg == 1]) > np.median(img[seg == 2]) + 80


def test_vessel_distance_is_metric_in_mm_for_anisotropic_voxels():
    """A segment along x of radius 1 mm: a voxel centre 2 voxels away in z (3 mm) is 2 mm outside."""
    from nnunet_vasculature.synthetic.vessels import VesselTree
    sp = (1.5, 0.8, 0.8)
    zc, yc = 10 * 1.5 + 0.75, 10 * 0.8 + 0.4          # through the centre of voxel (10, 10, *)
    tree = VesselTree(np.array([[zc, yc, 0.0]]), np.array([[zc, yc, 16.0]]), np.array([1.0]), np.array([True]))
    d = vessel_distance((20, 20, 20), sp, tree, margin=5.0)
    assert d[10, 10, 5] == pytest.approx(-1.0, abs=1e-5)
    assert d[12, 10, 5] == pytest.approx(2.0, abs=1e-5)
    assert d[10, 12, 5] == pytest.approx(0.6, abs=1e-5)


def test_build_source_rejects_a_non_zip_output(tmp_path, capsys):
    assert cli_main(["standin", "--iterations", "1", "-o", str(tmp_path / "model.txt")]) == 2
    assert "must be a .zip" in capsys.readouterr().err
    assert not (tmp_path / "model.txt").exists() and not record_path(tmp_path / "model.txt").exists()
