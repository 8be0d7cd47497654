"""The post-processing decision read through one typed record: files of every version and competition read
alike, fields that contradict each other refused, the written keys unchanged, the tuning curve a score."""
import json

import numpy as np
import pytest

from nnunet_vasculature.cli import main
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.metrics.surface_dice import surface_dice_sweep
from nnunet_vasculature.postprocess import hubmap_kidney, sennet

# as tune wrote them (keys and values copied from files of earlier versions, not made by the code under test)
SENNET_FILE = {"competition": "sennet", "nnunet_vasculature_version": "0.4.0", "threshold_mode": "probability",
               "threshold": 0.8901960784313725, "threshold_u8": 227, "vessel_fraction": 0.0021, "closing_radius": 1,
               "min_component_voxels": 32, "objective": "nsd0", "mean_score": 0.61}
KIDNEY_FILE = {"competition": "hubmap-kidney", "nnunet_vasculature_version": "0.4.0", "threshold": 0.4,
               "threshold_u8": 102, "min_component_pixels": 1024, "mean_dice": 0.9}


def _write(tmp_path, record, name="pp.json"):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize("load", [sennet.load_postprocessing, hubmap_kidney.load_postprocessing],
                         ids=["sennet", "hubmap-kidney"])
def test_an_edited_threshold_that_disagrees_with_its_level_is_refused(tmp_path, load):
    """#35 item 6: ``threshold`` edited 0.89 -> 0.3, ``threshold_u8`` left at 227: the level (what is applied)
    was used silently; now one line naming the file and both fields."""
    record = dict(SENNET_FILE if load is sennet.load_postprocessing else KIDNEY_FILE, threshold=0.3)
    path = _write(tmp_path, record)
    with pytest.raises(UserError, match=rf"^{path}: threshold 0\.3 and threshold_u8 {record['threshold_u8']} .*"
                                        r"disagree; threshold_u8 is what is applied: set it to 76"):
        load(path)


def test_submit_refuses_the_edited_file_before_any_work(tmp_path, capsys):
    path = _write(tmp_path, dict(SENNET_FILE, threshold=0.3))
    assert main(["submit", "sennet", "-i", str(tmp_path / "absent.zarr"), "-pp", str(path),
                 "-o", str(tmp_path / "s.csv")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disagree" in err[0] and str(path) in err[0], err
    assert not (tmp_path / "s.csv").exists()


def test_hubmap_kidney_reads_its_size_under_one_name_from_either_key(tmp_path):
    """The kidney's minimum component size is the rule's ``min_component_size`` (it was renamed to
    ``min_component_voxels`` in a dict); files with either key read, two keys that disagree are refused."""
    new = hubmap_kidney.load_postprocessing(_write(tmp_path, KIDNEY_FILE))
    old = {k: v for k, v in KIDNEY_FILE.items() if k != "min_component_pixels"} | {"min_component_voxels": 1024}
    older = hubmap_kidney.load_postprocessing(_write(tmp_path, old, "old.json"))
    assert new.min_component_size == older.min_component_size == 1024 and new.level == 102
    both = _write(tmp_path, dict(KIDNEY_FILE, min_component_voxels=8), "both.json")
    with pytest.raises(UserError, match="min_component_voxels 8 and min_component_pixels 1024 disagree"):
        hubmap_kidney.load_postprocessing(both)


def test_the_written_keys_are_those_of_earlier_files(tmp_path):
    """MaskRule.to_json gives the decision's keys and values of files earlier versions wrote (the Kaggle
    script and older readers read them)."""
    from nnunet_vasculature.postprocess.mask_rule import MaskRule
    for record in (SENNET_FILE, KIDNEY_FILE):
        rule = MaskRule.from_json(record, "pp.json")
        decision = {k: v for k, v in record.items() if k not in ("objective", "mean_score", "mean_dice")}
        assert rule.to_json() == decision


def test_the_tuning_curve_is_a_score(tmp_path):
    """#34 item 8: the sweep's summed differences left mean_curve[0] at -6e-16 (a negative surface Dice) where
    nothing matches; every entry is now within [0, 1]."""
    rng = np.random.default_rng(1)
    shape = tuple(int(x) for x in rng.integers(8, 24, 3))
    prob = rng.integers(0, 256, shape).astype(np.uint8)
    gt = np.zeros(shape, bool)
    inner = tuple(slice(2 + int(rng.integers(0, 2)), s - 2 - int(rng.integers(0, 2))) for s in shape)
    gt[inner] = rng.random(gt[inner].shape) < 0.5
    curve = surface_dice_sweep(prob, gt, block=int(rng.integers(1, 6)))
    assert curve.min() >= 0.0 and curve.max() <= 1.0
    assert curve[0] == 0.0          # the whole volume's surface (its border) meets no labelled surface
