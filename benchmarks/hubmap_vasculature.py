"""AP@0.6 (OpenImages-style, ours) vs a plain pycocotools COCOeval on the same synthetic instance masks.

Run under ``nice -n 10 .venv/bin/python -m benchmarks hubmap_vasculature [--tiles 2000]``. Prints both
times, measured in the same run: ours from label images (bincount overlaps), COCOeval from RLEs (its
evaluate + accumulate, with the RLE encoding timed separately), and both APs (they differ by design: all-point
vs 101-point interpolation, see nnunet_vasculature/metrics/average_precision.py).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmarks.common import record
from nnunet_vasculature.metrics.average_precision import average_precision


def make_tiles(n: int, seed: int = 0, size: int = 512) -> list:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    tiles = []
    for _ in range(n):
        gt = np.zeros((size, size), np.int32)
        det = np.zeros((size, size), np.int32)
        scores = []
        for k in range(int(rng.integers(0, 12))):
            cy, cx, r = rng.uniform(20, size - 20), rng.uniform(20, size - 20), rng.uniform(4, 25)
            gt[((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2) & (gt == 0)] = k + 1
            if rng.random() < 0.8:
                dy, dx = rng.normal(0, r / 4, 2)
                det[((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < (r * rng.uniform(0.8, 1.2)) ** 2) & (det == 0)] = \
                    len(scores) + 1
                scores.append(float(rng.random()))
        tiles.append((gt, det, scores))
    return tiles


def coco_inputs(tiles: list) -> tuple[dict, list]:
    images, anns, dets = [], [], []
    for i, (gt, det, scores) in enumerate(tiles):
        images.append({"id": i, "height": gt.shape[0], "width": gt.shape[1]})
        for k in range(1, int(gt.max()) + 1):
            rle = coco_mask.encode(np.asfortranarray((gt == k).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                         "area": float(coco_mask.area(rle)), "bbox": list(coco_mask.toBbox(rle))})
        for k, s in enumerate(scores, 1):
            rle = coco_mask.encode(np.asfortranarray((det == k).astype(np.uint8)))
            dets.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": s})
    return {"images": images, "annotations": anns, "categories": [{"id": 1}]}, dets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=2000)
    a = ap.parse_args()
    tiles = make_tiles(a.tiles)
    n_gt = sum(int(t[0].max()) for t in tiles)
    n_det = sum(len(t[2]) for t in tiles)
    t0 = time.perf_counter()
    ours = average_precision(tiles)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds, dets = coco_inputs(tiles)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = ds
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(dets), "segm")
        e.params.iouThrs, e.params.areaRng, e.params.areaRngLbl, e.params.maxDets = \
            np.array([0.6]), [[0, 1e10]], ["all"], [1000]
        e.evaluate()
        e.accumulate()
    t_coco = time.perf_counter() - t0
    coco_ap = float(np.mean(e.eval["precision"][0, :, 0, 0, 0]))
    print(f"{a.tiles} tiles 512x512, {n_gt} truths, {n_det} detections")
    print(f"ours (label images, bincount IoU, all-point AP): {t_ours:.2f} s  AP={ours:.4f}")
    print(f"COCOeval (RLE, evaluate+accumulate, 101-point):  {t_coco:.2f} s  AP={coco_ap:.4f} "
          f"(+ {t_enc:.2f} s to RLE-encode the masks)")
    print(f"ratio COCOeval / ours: {t_coco / t_ours:.2f} (with encoding: {(t_coco + t_enc) / t_ours:.2f})")
    record("hubmap_vasculature", {"tiles": a.tiles, "truths": n_gt, "detections": n_det, "rows": [
        {"method": "ours (label images, bincount IoU, all-point AP)", "seconds": t_ours, "AP@0.6": ours},
        {"method": "COCOeval (RLE, evaluate+accumulate, 101-point)", "seconds": t_coco, "AP@0.6": coco_ap,
         "RLE encoding (s)": t_enc}], "COCOeval / ours": t_coco / t_ours,
        "COCOeval with encoding / ours": (t_coco + t_enc) / t_ours}, a)


if __name__ == "__main__":
    main()
