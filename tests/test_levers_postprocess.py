"""Post-processing levers of the SenNet winners: a 3D closing (streamed) and thresholds by vessel fraction."""
import json

import cc3d
import numpy as np
import pytest
from helpers.postprocess import _write_kidney
from scipy import ndimage as ndi

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.metrics.surface_dice import surface_dice
from nnunet_vasculature.postprocess.__main__ import main as pp_main
from nnunet_vasculature.postprocess.morphology import closed_reader, level_for_fraction, level_histogram
from nnunet_vasculature.postprocess.sennet import load_postprocessing
from nnunet_vasculature.postprocess.tune import masks


def _plain_closing(m: np.ndarray, r: int) -> np.ndarray:
    """Closing by its definition on a canvas with 2r background voxels around the volume (so the
    outside is background, as in the volume's true surroundings): dilation = OR of ball shifts,
    erosion = AND of ball shifts."""
    offs = [(z, y, x) for z in range(-r, r + 1) for y in range(-r, r + 1) for x in range(-r, r + 1)
            if z * z + y * y + x * x <= r * r]
    c = np.pad(m, 2 * r)
    shift = lambda a, o: np.roll(a, o, axis=(0, 1, 2))     # the canvas margin makes wrap-around harmless
    dil = np.zeros_like(c)
    for o in offs:
        dil |= shift(c, o)
    ero = np.ones_like(c)
    for o in offs:
        ero &= shift(dil, o)
    return ero[2 * r:-2 * r, 2 * r:-2 * r, 2 * r:-2 * r]


def test_streamed_closing_equals_closing_by_definition():
    rng = np.random.default_rng(0)
    m = ndi.gaussian_filter(rng.random((23, 18, 20)), 1) > 0.55
    m[0, 5, 5] = m[-1, 3, 3] = m[7, 0, 0] = True        # foreground on the volume's faces and corner
    for r in (1, 2):
        expect = _plain_closing(m, r)
        assert (expect & ~m).any()                      # closing fills something here
        assert expect[0, 5, 5] and expect[-1, 3, 3]     # and keeps foreground on the border
        for block in (1, 5, 64):
            read = closed_reader(lambda a, b: m[a:b], m.shape[0], r)
            got = np.concatenate([read(z, min(23, z + block)) for z in range(0, 23, block)])
            np.testing.assert_array_equal(got, expect, err_msg=f"radius {r}, block {block}")


def test_level_for_fraction_is_the_highest_level_reaching_it():
    rng = np.random.default_rng(1)
    p = (rng.beta(0.5, 2, size=(9, 20, 20)) * 255).astype(np.uint8)
    hist = level_histogram(p, block=4)
    for frac in (0.0005, 0.01, 0.2, 0.5, np.mean(p >= 1)):
        ok = [lv for lv in range(1, 256) if np.mean(p >= lv) >= frac]
        assert level_for_fraction(hist, frac) == max(ok)
    assert level_for_fraction(hist, 1.01) == 1          # unreachable: the lowest non-trivial level


def _shifted_pair(rng, shape=(20, 28, 28)):
    """Two kidneys with the same vessel fraction whose probabilities are calibrated differently: one
    fixed threshold cannot suit both, a fraction can."""
    out = []
    for gain in (0.9, 0.35):
        f = ndi.gaussian_filter(rng.random(shape), 2)
        gt = f > np.quantile(f, 0.9)
        prob = ndi.gaussian_filter(gt.astype(float), 1.0) * gain + rng.random(shape) * 0.1
        out.append((gt, np.clip(prob, 0, 1)))
    return out


def test_tune_by_fraction_and_closing(tmp_path):
    rng = np.random.default_rng(2)
    kidneys = dict(zip(("kidney_2", "kidney_3"), _shifted_pair(rng)))
    labels = [str(_write_kidney(tmp_path, n, *kidneys[n])) for n in kidneys]
    pp = tmp_path / "pp.json"
    assert pp_main(["tune", "-i", str(tmp_path / "probs.zarr"), "--labels", *labels, "-o", str(pp),
                    "--by_fraction", "--closing", "1", "--no_cc"]) == 0
    res = json.loads(pp.read_text())
    assert res["threshold_mode"] == "fraction"
    levels = res["per_kidney_levels"]
    assert levels["kidney_2"] > levels["kidney_3"] + 40        # each kidney gets its own level
    # the fraction's score is recomputed plainly and beats the best single threshold on these kidneys
    u8 = {n: np.rint(p * 255).astype(np.uint8) for n, (_, p) in kidneys.items()}
    plain = np.mean([surface_dice(u8[n] >= levels[n], g, empty_score=0.0) for n, (g, _) in kidneys.items()])
    assert abs(plain - res["mean_surface_dice_at_fraction"]) < 1e-9
    best_single = max(np.mean([surface_dice(u8[n] >= t, g, empty_score=0.0) for n, (g, _) in kidneys.items()])
                      for t in range(256))
    assert res["mean_surface_dice_at_fraction"] > best_single + 0.02
    # the closing's score is that of the closed masks, kept only if it is better than none
    closed = np.mean([surface_dice(_plain_closing(u8[n] >= levels[n], 1), g, empty_score=0.0)
                      for n, (g, _) in kidneys.items()])
    assert abs(res["closing_scores"]["1"] - closed) < 1e-9
    assert res["closing_radius"] == (1 if closed > plain else 0)

    # apply: each volume's own level for the fraction, then closing and component removal
    pp2 = dict(load_postprocessing(pp), closing_radius=1, min_component_voxels=20)
    for n, (g, p) in kidneys.items():
        got = np.concatenate([m for _, m in masks(u8[n], pp2)])
        frac_level = max(lv for lv in range(1, 256) if np.mean(u8[n] >= lv) >= res["vessel_fraction"])
        expect = _plain_closing(u8[n] >= frac_level, 1)
        lab = cc3d.connected_components(expect.astype(np.uint8), connectivity=26)
        expect &= np.bincount(lab.ravel())[lab] >= 20
        np.testing.assert_array_equal(got, expect)


def test_bad_lever_settings_are_refused_by_name(tmp_path):
    pp = tmp_path / "pp.json"
    for bad, word in (({"threshold_mode": "fraction", "vessel_fraction": 0}, "vessel_fraction"),
                      ({"threshold_mode": "percentile"}, "threshold_mode"),
                      ({"closing_radius": -1}, "closing_radius")):
        pp.write_text(json.dumps({"threshold_u8": 128, **bad}))
        with pytest.raises(UserError, match=word) as e:
            load_postprocessing(pp)
        assert str(pp) in str(e.value)
