"""The reduced HuBMAP vasculature demo (``demo hubmap-vasculature --quick``) through the console script:
every promised file, a submission that decodes with plain pycocotools, and the reported held-out and test
AP recomputed from the files with the plain metric function."""
import base64
import contextlib
import csv
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from nnunet_vasculature.io.polygons import read_polygons
from nnunet_vasculature.metrics.average_precision import average_precision
from nnunet_vasculature.postprocess.hubmap_vasculature import polygon_masks, validate

# pycocotools 2.x decode under numpy 2 warns once per mask; nothing of ours. Trains with nnU-Net: slow.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"), pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from nnunet_vasculature.demo.hubmap_vasculature import run_demo
    out = tmp_path_factory.mktemp("hv_demo") / "demo"
    buffer = io.StringIO()                        # the step lines the demo prints
    with contextlib.redirect_stdout(buffer):
        run_demo(out, quick=True)
    return out, buffer.getvalue()


def _decode(text: str, h: int, w: int) -> np.ndarray:
    """base64 -> zlib -> COCO compressed RLE counts -> mask, with pycocotools only (DOMAIN §8)."""
    rle = {"size": [h, w], "counts": zlib.decompress(base64.b64decode(text))}
    return coco_mask.decode(rle).astype(bool)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_demo_writes_every_output(demo):
    out, stdout = demo
    for name in ("summary.json", "overlay.png", "submission.csv", "postprocessing.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len([line for line in stdout.splitlines() if line.startswith("[") and "done in" in line]) == 10
    s = json.loads((out / "summary.json").read_text())
    assert s["quick"] and s["plans"] == "nnUNetPlans_cpu"
    # trained and predicted with the CPU-sized plans, which share the stock plans' preprocessed data
    pre = next((out / "nnUNet_preprocessed").glob("Dataset602_*"))
    small, stock = (json.loads((pre / f"{n}.json").read_text())["configurations"]["2d"]
                    for n in ("nnUNetPlans_cpu", "nnUNetPlans"))
    assert small["data_identifier"] == stock["data_identifier"]
    assert max(small["architecture"]["arch_kwargs"]["features_per_stage"]) <= 32
    assert (next((out / "nnUNet_results").glob("Dataset602_*")) / "nnUNetTrainer_demo__nnUNetPlans_cpu__2d"
            / "fold_0" / "checkpoint_final.pth").is_file()
    # stock --save_probabilities output for every held-out and test tile
    assert {p.stem for p in (out / "probs").glob("*.npz")} == set(s["heldout_tiles"]) | set(s["test_tiles"])
    from PIL import Image
    im = Image.open(out / "overlay.png")
    assert im.size[0] > 2.2 * im.size[1]   # three square panels side by side (tile | truth | instances) + titles


def test_quick_demo_submission_decodes_and_validates(demo):
    out, _ = demo
    sample = out / "kaggle" / "sample_submission.csv"
    rows = _rows(out / "submission.csv")
    assert list(rows[0]) == ["id", "height", "width", "prediction_string"]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in _rows(sample))
    n = 0
    for r in rows:
        tok = r["prediction_string"].split()
        assert len(tok) % 3 == 0 and set(tok[0::3]) <= {"0"}
        # the masks and scores are the written instances (label k = k-th mask), in the submission encoding
        with np.load(out / "instances" / f"{r['id']}.npz") as z:
            lab, scores = z["instances"], z["scores"]
        assert len(tok) // 3 == len(scores) == lab.max()
        for k, (score, text) in enumerate(zip(tok[1::3], tok[2::3]), 1):
            assert float(score) == pytest.approx(scores[k - 1], abs=1e-6) and 0 <= float(score) <= 1
            assert np.array_equal(_decode(text, int(r["height"]), int(r["width"])), lab == k)
            n += 1
    assert validate(out / "submission.csv", sample) == n == json.loads((out / "summary.json").read_text())[
        "test_instances"]


def test_quick_demo_reported_ap_is_recomputed_from_the_files(demo):
    out, _ = demo
    s = json.loads((out / "summary.json").read_text())
    pp = json.loads((out / "postprocessing.json").read_text())
    assert s["heldout_ap"] == pp["ap"] == max(r["ap"] for r in pp["grid"])
    assert set(pp["tiles"]) == set(s["heldout_tiles"])      # tuned on the held-out tiles only
    # held out: the written instances (tuned parameters) against the polygons, with the plain metric
    truth = read_polygons(out / "kaggle" / "polygons.jsonl")
    meta = {r["id"]: r for r in _rows(out / "kaggle" / "tile_meta.csv")}
    assert all(meta[t]["source_wsi"] == "1" and meta[t]["dataset"] == "1" for t in s["heldout_tiles"])
    tiles = []
    for t in s["heldout_tiles"]:
        with np.load(out / "instances" / f"{t}.npz") as z:
            tiles.append((polygon_masks(truth[t], (512, 512)), z["instances"], z["scores"]))
    assert average_precision(tiles) == pytest.approx(s["heldout_ap"], abs=1e-12)
    # test: submission against the hidden solution, both decoded with pycocotools only
    sub = {r["id"]: r["prediction_string"].split() for r in _rows(out / "submission.csv")}
    tiles = []
    for r in _rows(out / "kaggle" / "solution.csv"):
        h, w = int(r["height"]), int(r["width"])
        gt = [_decode(t, h, w) for t in r["annotations"].split()]
        gt = np.stack(gt) if gt else np.zeros((0, h, w), bool)
        tok = sub[r["id"]]
        det = np.stack([_decode(t, h, w) for t in tok[2::3]]) if tok else np.zeros((0, h, w), bool)
        tiles.append((gt, det, [float(x) for x in tok[1::3]]))
    assert average_precision(tiles) == pytest.approx(s["test_ap"], abs=1e-12)
