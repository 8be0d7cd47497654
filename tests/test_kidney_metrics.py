"""The hosts' five per-kidney metrics (issue 26) against independent code: the logic of the hosts' script
(``evaluate_kaggle_top50.py``: Kaggle's metric = DeepMind surface-distance, scikit-image's Lee skeleton, MONAI's
ASSD and Dice), on small kidneys built here with numpy/scipy/scikit-image drawing (not our writers)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import surface_distance
import torch
from monai.metrics import compute_average_surface_distance, compute_dice
from scipy import ndimage
from skimage.draw import line_nd
from skimage.morphology import skeletonize

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.metrics.hosts import (
    kidney_scores,
    mean_scores,
    objective_scores,
    scores_document,
    write_scores_json,
)
from nnunet_vasculature.metrics.packed_volume import PackedVolume
from nnunet_vasculature.metrics.skeleton import disk_radius_bounds, skeleton_difference
from nnunet_vasculature.metrics.surface_distances import average_symmetric_surface_distance

if "Inf" not in np.__dict__:   # surface-distance 0.1 predates NumPy 2 (uses np.Inf for an empty surface)
    np.Inf = np.inf

ALL = ("nsd0", "nsd1", "cldice", "assd", "dice")


# ---------------------------------------------------------------- the hosts' definitions, written independently
def host_nsd(pred: np.ndarray, gt: np.ndarray, tolerance: int) -> float:
    d = surface_distance.compute_surface_distances(gt, pred, (1, 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(surface_distance.compute_surface_dice_at_tolerance(d, tolerance))


def host_cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        tprec = np.sum(pred * (skeletonize(gt, method="lee") > 0)) / np.sum(skeletonize(gt, method="lee") > 0)
        tsens = np.sum(gt * (skeletonize(pred, method="lee") > 0)) / np.sum(skeletonize(pred, method="lee") > 0)
        return float(2 * tprec * tsens / (tprec + tsens))


def host_assd(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None]
    with pytest.warns(UserWarning) if not (pred.any() and gt.any()) else _nothing():
        return float(compute_average_surface_distance(p, g, spacing=1, symmetric=True).item())


def host_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None]
    return float(compute_dice(p, g).item())


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


HOSTS = {"nsd0": lambda p, g: host_nsd(p, g, 0), "nsd1": lambda p, g: host_nsd(p, g, 1),
         "cldice": host_cldice, "assd": host_assd, "dice": host_dice}


# ---------------------------------------------------------------- small kidneys
def tree(shape: tuple[int, int, int], seed: int, segments: int = 10, max_radius: int = 2) -> np.ndarray:
    """Random branching tubes: segments from earlier end points, each dilated (6-connected) to a random radius."""
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, bool)
    ends = [np.array(shape) // 2]
    for _ in range(segments):
        start = ends[rng.integers(len(ends))]
        end = np.clip(start + rng.integers(-shape[0] // 2, shape[0] // 2 + 1, 3), 0, np.array(shape) - 1)
        seg = np.zeros(shape, bool)
        seg[line_nd(start, end)] = True
        radius = int(rng.integers(0, max_radius + 1))
        if radius:
            seg = ndimage.binary_dilation(seg, ndimage.generate_binary_structure(3, 1), iterations=radius)
        vol |= seg
        ends.append(end)
    return vol


def far_false_positive(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros(shape, bool)
    gt[:shape[0] // 4] = tree((shape[0] // 4, *shape[1:]), seed)
    pred = gt.copy()
    pred[-3:, 2:6, 2:6] = True             # a blob far from every truth voxel (distance ~ the depth)
    pred[0, -1, -1] = True                 # and a single voxel in a corner
    return pred, gt


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    shape = (40, 28, 30)
    out = {}
    g = tree(shape, 1)
    out["tree vs other tree"] = (tree(shape, 2), g)
    out["shifted tree"] = (np.roll(g, (1, 2, -1), axis=(0, 1, 2)), g)
    out["identical"] = (g.copy(), g)
    lines = tree(shape, 4, segments=6, max_radius=0)
    out["1-voxel lines"] = (np.roll(lines, 1, axis=2), lines)
    out["far false positives"] = far_false_positive(shape, 5)
    out["empty truth"] = (g.copy(), np.zeros(shape, bool))
    out["empty prediction"] = (np.zeros(shape, bool), g)
    out["both empty"] = (np.zeros(shape, bool), np.zeros(shape, bool))
    thick = tree(shape, 6, segments=5, max_radius=4)
    out["thick vs thin"] = (tree(shape, 6, segments=5, max_radius=1), thick)
    return out


CASES = cases()


def assert_same(ours: float, ref: float, metric: str) -> None:
    if math.isnan(ref):
        assert math.isnan(ours), (metric, ours, ref)
    elif math.isinf(ref):
        assert ours == ref, (metric, ours, ref)
    elif metric == "assd":
        assert ours == pytest.approx(ref, rel=1e-5), metric
    else:
        assert ours == pytest.approx(ref, abs=1e-6), metric


@pytest.mark.parametrize("name", list(CASES))
def test_five_metrics_equal_the_hosts_definitions(name):
    pred, gt = CASES[name]
    ours = kidney_scores(pred, gt, ALL, block=7, skeleton_core=9, skeleton_halo=12)
    assert list(ours) == list(ALL)
    for metric in ALL:
        assert_same(ours[metric], HOSTS[metric](pred, gt), metric)


def test_empty_mask_conventions():
    pred, gt = CASES["empty truth"]
    s = kidney_scores(pred, gt, ALL)
    assert math.isnan(s["dice"]) and math.isnan(s["cldice"]) and s["assd"] == math.inf and s["nsd0"] == 0.0
    s = kidney_scores(*CASES["both empty"], ALL)
    assert all(math.isnan(s[m]) for m in ALL)


@pytest.mark.parametrize("block", [1, 2, 5, 64])
def test_slab_sizes_do_not_change_the_result(block):
    pred, gt = CASES["shifted tree"]
    whole = kidney_scores(pred, gt, ALL, block=len(gt))
    ours = kidney_scores(pred, gt, ALL, block=block, skeleton_core=block, skeleton_halo=12)
    for metric in ALL:
        assert ours[metric] == pytest.approx(whole[metric], rel=1e-12, abs=1e-12), (metric, block)


@pytest.mark.parametrize("slab", [1, 3, 8, 100])
def test_assd_slab_search_is_exact_for_far_surfaces(slab):
    pred, gt = CASES["far false positives"]
    packed = []
    for vol in (pred, gt):
        p = PackedVolume(vol.shape)
        p.write(0, vol)
        packed.append(p)
    assert average_symmetric_surface_distance(*packed, slab=slab) == pytest.approx(host_assd(pred, gt), rel=1e-5)


def test_skeleton_slabs_equal_the_whole_volume_skeleton_with_a_halo_above_the_thickness():
    z, y, x = np.mgrid[:60, :40, :40]
    cylinder = ((y - 20) ** 2 + (x - 19) ** 2 <= 10 ** 2) & (z > 3) & (z < 57)      # radius 10 along z
    branches = tree((60, 40, 40), 8, segments=12, max_radius=4)
    for vol in (cylinder, branches, cylinder | branches):
        assert skeleton_difference(vol, core=8, halo=16, follow_thickness=False) == 0
    # a halo shorter than the radius does differ: the halo is what makes the slabs exact
    assert skeleton_difference(cylinder, core=8, halo=2, follow_thickness=False) > 0


def test_the_halo_grows_with_the_thickness_of_the_vessels_in_the_slab():
    # an oblique radius-20 cylinder: a fixed 10-plane halo changes the skeleton; grown from the planes' disk
    # radius bound (2 R + 8) it equals the whole-volume skeleton
    z, y, x = np.indices((150, 60, 70), dtype=np.float32)
    w = np.stack([z - 75, y - 30, x - 35])
    axis = np.array([1, 0.3, 0.5], np.float32) / np.linalg.norm([1, 0.3, 0.5])
    cylinder = ((w - np.tensordot(axis, w, 1)[None] * axis[:, None, None, None]) ** 2).sum(0) <= 20 ** 2
    assert skeleton_difference(cylinder, core=25, halo=10, follow_thickness=False) > 0
    assert skeleton_difference(cylinder, core=25, halo=10) == 0


def test_disk_radius_bounds_are_upper_bounds_of_the_largest_inscribed_disk():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:90, :70]
    planes = np.zeros((40, 90, 70), dtype=bool)
    for plane in planes:
        for _ in range(rng.integers(0, 4)):
            cy, cx, r = rng.uniform(-10, 100), rng.uniform(-10, 80), rng.uniform(0.5, 30)
            plane |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    bounds = disk_radius_bounds(planes)
    truth = np.array([ndimage.distance_transform_edt(np.pad(p, 1)).max() for p in planes])
    assert (bounds >= truth - 1e-9).all()
    assert (bounds <= truth + 2 * 3 * np.sqrt(2) + 4).all()      # and not loose by more than two blocks
    assert truth.max() > 20 and (truth == 0).any()


# ---------------------------------------------------------------- slab tasks on dask
def slab_tasks_run(**kw: object) -> tuple[dict[str, float], list[str]]:
    """kidney_scores(**kw) and the keys of the slab tasks dask ran (a dask callback sees every finished task)."""
    from dask.callbacks import Callback
    keys: list[str] = []
    with Callback(posttask=lambda key, *rest: keys.append(str(key))):
        scores = kidney_scores(**kw)
    return scores, [k for k in keys if k.startswith("slab_task")]


@pytest.mark.parametrize("name", [n for n in CASES if n != "both empty"])
def test_two_workers_give_the_values_of_the_plain_loop(name):
    pred, gt = CASES[name]
    geometry = {"skeleton_core": 9, "skeleton_halo": 12}
    serial = kidney_scores(pred, gt, ALL, **geometry)
    parallel, tasks = slab_tasks_run(pred=pred, gt=gt, metrics=ALL, workers=2, **geometry)
    assert len(tasks) == 5              # 40 planes in cores of 9: five independent slab tasks
    for metric in ALL:
        assert_same(parallel[metric], serial[metric], metric)
        if math.isfinite(serial[metric]):
            assert parallel[metric] == pytest.approx(serial[metric], rel=1e-12, abs=1e-12), metric


def test_the_dask_graph_has_one_task_per_slab_and_the_sums_are_exact():
    pred, gt = CASES["far false positives"]       # far voxels: the ASSD search over the whole volume after the tasks
    one, tasks_one = slab_tasks_run(pred=pred, gt=gt, metrics=ALL, workers=2, skeleton_core=40)
    many, tasks_many = slab_tasks_run(pred=pred, gt=gt, metrics=ALL, workers=2, skeleton_core=4, skeleton_halo=40)
    assert len(tasks_one) == 1 and len(tasks_many) == 10
    # a 40-plane halo covers the whole kidney: the same skeletons; every count is summed exactly
    assert one == many
    for metric in ALL:
        assert_same(many[metric], HOSTS[metric](pred, gt), metric)


def test_slab_tasks_on_a_dask_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    pred, gt = CASES["shifted tree"]
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        ours = kidney_scores(pred, gt, ALL, skeleton_core=9, skeleton_halo=12, scheduler=client)
    assert ours == kidney_scores(pred, gt, ALL, skeleton_core=9, skeleton_halo=12)


def test_bad_worker_requests_are_one_line():
    pred, gt = CASES["shifted tree"]
    with pytest.raises(UserError, match="--workers 0: need at least 1"):
        kidney_scores(pred, gt, ALL, workers=0)
    with pytest.raises(UserError, match="not both"):
        kidney_scores(pred, gt, ALL, workers=2, scheduler="tcp://127.0.0.1:1")


def test_zarr_and_mixed_inputs(tmp_path):
    zarr = pytest.importorskip("zarr")
    pred, gt = CASES["shifted tree"]
    zp = zarr.create_array(str(tmp_path / "p.zarr"), shape=pred.shape, chunks=(4, 28, 30), dtype="uint8")
    zp[:] = pred.astype(np.uint8) * 255
    ours = kidney_scores(zp, gt.astype(np.uint8), ("nsd1", "dice"))
    assert ours["nsd1"] == pytest.approx(host_nsd(pred, gt, 1), abs=1e-6)
    assert ours["dice"] == pytest.approx(host_dice(pred, gt), abs=1e-6)


def test_bad_input_is_one_line():
    pred, gt = CASES["shifted tree"]
    with pytest.raises(UserError, match="unknown metric 'hd95'") as err:
        kidney_scores(pred, gt, ["nsd0", "hd95"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="kidney_9: prediction of shape"):
        kidney_scores(pred[:-1], gt, ["nsd0"], where="kidney_9")
    with pytest.raises(UserError, match="1 slice"):
        kidney_scores(pred[:1], gt[:1], ["dice"])
    with pytest.raises(UserError, match="unknown metric 'assd'"):
        objective_scores(pred.astype(np.uint8), gt, "assd")


def test_mean_ignores_nan_keeps_inf_and_json_is_strict(tmp_path):
    per = {"kidney_1": {"nsd0": 0.5, "assd": 2.0, "dice": float("nan")},
           "kidney_2": {"nsd0": 0.7, "assd": float("inf"), "dice": float("nan")}}
    mean = mean_scores(per)
    assert mean["nsd0"] == pytest.approx(0.6) and mean["assd"] == math.inf and math.isnan(mean["dice"])
    path = write_scores_json(per, tmp_path / "scores.json")
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["kidney_2"] == {"nsd0": 0.7, "assd": "Infinity", "dice": None}
    assert doc["mean"]["nsd0"] == pytest.approx(0.6) and doc["mean"]["dice"] is None
    with pytest.raises(UserError, match="named 'mean'"):
        scores_document({"mean": {"nsd0": 1.0}})


def test_objective_scores_equal_thresholded_metrics():
    rng = np.random.default_rng(0)
    gt = CASES["shifted tree"][1]
    prob = np.clip(ndimage.gaussian_filter(gt.astype(float), 1.0) * 255 + rng.normal(0, 20, gt.shape), 0, 255)
    prob = prob.astype(np.uint8)
    levels = [40, 128, 200]
    for objective in ("nsd0", "nsd1", "cldice", "dice"):
        got = objective_scores(prob, gt, objective, levels, block=6, skeleton_core=10, skeleton_halo=12)
        assert list(got) == levels
        for lv in levels:
            assert_same(got[lv], HOSTS[objective](prob >= lv, gt), objective)
    assert len(objective_scores(prob, gt, "dice")) == 256
    assert list(objective_scores(prob, gt, "nsd1", block=40)) == list(range(8, 256, 16))
