"""The tissue mask: network passes and wall time saved on synthetic kidneys filling ~30, ~60 and ~90 % of the field.

Each volume (numpy, made here) is a HiP-CT-like sample in mounting medium: grey values as
``nnunet_vasculature.synthetic.sennet`` renders them (medium 2500, tissue 14000 + texture, vessels 7000 brighter,
noise 900, uint16), the sample a rounded box (superellipsoid, exponent 4) whose size is chosen so that it fills the
given share of the voxels, vessels the synthetic generator's branching trees inside it. Each is predicted by
``StreamingPredictor`` with the tissue mask off (the reference, measured in the same run) and on; the figures are
the tiles (network passes, no TTA) run and skipped, the wall time of both runs, and how the masked result
compares with the full run: whether the probabilities inside the undilated mask are bitwise equal, the largest
difference outside it, and the surface Dice (tolerance 0) of the masked run's segmentation (probability >= 0.5)
against the full run's, and of each against the vessel labels.

The default model is a tiny network with random weights (``demo/tiny_model.py``): right for counting passes and
timing, not for judging the segmentation (a random network's output in the medium is arbitrary, so the surface
Dice against the full run measures what the mask removes there). ``--model FOLDER`` takes a trained model (e.g.
the demo's, trained on the synthetic kidneys) for the surface Dice.

    nice -n 10 .venv/bin/python -m benchmarks tissue_mask [--shape 96 384 384] [--fills 0.3 0.6 0.9]
        [--model FOLDER] [--threads 1] [--kidney_shape 2279 1303 912] [--counts_only]

The network runs above fit the 2-core machine only at a small field, where the one-patch dilation leaves few tiles
to skip. The tiles a kidney-size field would skip are counted without the network, as `predict --dry_run` does
(``inference.tissue.measure_tiles``: the same strided read and mask): the sample (the same rounded box, filling
each ``--fills`` share; tissue 14000, medium 2500, noise 900, no vessels) is rendered plane by plane on demand at
``--kidney_shape`` (default kidney_1_dense's), for nnU-Net's sliding window with step 0.5 and two patch sizes
(the stand-in's 128³ and a Task008-size 64 × 192²) at the input's own spacing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import record, table

VOXEL_UM = 50.0


def make_volume(shape: tuple[int, int, int], fill: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(image float32 of uint16 values, vessel labels bool, the sample's share of the voxels)."""
    from scipy import ndimage as ndi

    from nnunet_vasculature.synthetic.sennet import MEDIUM
    from nnunet_vasculature.synthetic.vessels import grow_tree, segment_field
    rng = np.random.default_rng(seed)
    axes = [np.abs((np.arange(n) + 0.5) / n * 2 - 1) for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij", sparse=True)
    radius = (zz ** 4 + yy ** 4 + xx ** 4) ** 0.25
    size = float(np.quantile(radius, fill))
    sample = radius <= size
    field = np.array(shape, float) * VOXEL_UM
    extent = field * min(size, 1.0)
    tree = grow_tree(rng, extent, 4.5 * VOXEL_UM, VOXEL_UM, 6, 0.0)
    distance = segment_field(-(field - extent) / 2, shape, VOXEL_UM, tree, False, 2 * VOXEL_UM)
    vessels = (distance <= 0) & sample
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 8)
    texture *= 1200 / max(float(texture.std()), 1e-6)
    vessel_signal = 7000.0 / (1.0 + np.exp(np.clip(distance / (0.6 * VOXEL_UM), -30, 30)))
    img = np.where(sample, 14000.0 + texture + vessel_signal, MEDIUM) + rng.normal(0, 900, shape)
    return np.clip(img, 0, 65535).astype(np.uint16).astype(np.float32), vessels, float(sample.mean())


def predict(folder: Path, img: np.ndarray, tissue_mask: bool) -> tuple:
    """(probabilities, seconds, the predictor's tile count, its timings, the predictor, the volume source)."""
    import torch

    from nnunet_vasculature.inference.options import PredictionOptions
    from nnunet_vasculature.inference.streaming import StreamingPredictor
    from nnunet_vasculature.io.volume_source import VolumeSource
    predictor = StreamingPredictor(PredictionOptions.of(folder, [0], tta=False, tissue_mask=tissue_mask),
                                                torch.device("cpu"))
    src = VolumeSource("v", img.shape, (VOXEL_UM,) * 3, [], [(0, img.shape[0], lambda a, b: img[a:b])])
    out = np.zeros(img.shape, np.float32)

    def sink(z: int, planes: np.ndarray) -> None:
        out[z:z + len(planes)] = planes
    started = time.perf_counter()
    predictor.predict(src, sink)
    return out, time.perf_counter() - started, predictor.tile_count, dict(predictor.timings), predictor, src


KIDNEY_PATCHES = ((128, 128, 128), (64, 192, 192))


def sample_planes(shape: tuple[int, int, int], fill: float, seed: int = 0) -> tuple[object, float]:
    """A volume source rendering ``make_volume``'s sample (no vessels) plane by plane, and its share of the voxels
    (the superellipsoid's size from a 1-in-8 subsample of the field)."""
    from nnunet_vasculature.io.volume_source import VolumeSource
    from nnunet_vasculature.synthetic.sennet import MEDIUM
    axes = [np.abs((np.arange(n) + 0.5) / n * 2 - 1) for n in shape]
    sub = [a[::8] for a in axes]
    zz, yy, xx = np.meshgrid(*sub, indexing="ij", sparse=True)
    radius = (zz ** 4 + yy ** 4 + xx ** 4) ** 0.25
    size = float(np.quantile(radius, fill))
    share = float((radius <= size).mean())
    in_plane = axes[1][:, None] ** 4 + axes[2][None, :] ** 4

    def read(a: int, b: int) -> np.ndarray:
        rng = np.random.default_rng(seed + a)
        inside = (axes[0][a:b, None, None] ** 4 + in_plane[None]) ** 0.25 <= size
        img = np.where(inside, 14000.0, MEDIUM) + rng.normal(0, 900, (b - a, *shape[1:]))
        return np.clip(img, 0, 65535).astype(np.float32)
    return VolumeSource("kidney", shape, (VOXEL_UM,) * 3, [], [(0, shape[0], read)]), share


def kidney_counts(shape: tuple[int, int, int], fills: list[float]) -> list[dict]:
    """Tiles run and skipped with the tissue mask on a kidney-size field, per fill and patch (no network)."""
    from nnunet_vasculature.inference.geometry import StreamingGeometry
    from nnunet_vasculature.inference.tissue import measure_tiles
    kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    rows = []
    for fill in fills:
        src, share = sample_planes(shape, fill)
        for patch in KIDNEY_PATCHES:
            geometry = StreamingGeometry.plan(shape, src.spacing, [(0, n) for n in shape], (0, 1, 2), (0, 1, 2),
                                              src.spacing, patch, 0.5, kwargs, {**kwargs, "order": 1})
            started = time.perf_counter()
            count = measure_tiles(src, geometry, src.spacing)
            rows.append({"field": "x".join(map(str, shape)), "fill (%)": round(100 * share, 1),
                         "patch": "x".join(map(str, patch)), "tiles": count.tiles, "skipped": count.skipped,
                         "skipped (%)": round(100 * count.skipped / count.tiles, 1),
                         "mask (% of field)": round(100 * count.tissue_fraction, 1),
                         "mask s": round(time.perf_counter() - started, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 384, 384], help="volume (z y x), 50 µm voxels")
    ap.add_argument("--fills", type=float, nargs="+", default=[0.3, 0.6, 0.9], help="the sample's share of the field")
    ap.add_argument("--model", type=Path, help="a trained model folder (default: a tiny random model)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--kidney_shape", type=int, nargs=3, default=[2279, 1303, 912],
                    help="the field of the tile counts without the network (z y x)")
    ap.add_argument("--counts_only", action="store_true", help="only the kidney-size tile counts (no network)")
    a = ap.parse_args()
    counts = kidney_counts(tuple(a.kidney_shape), a.fills)
    print(f"tiles a kidney-size field skips with the tissue mask (no network; step 0.5, {VOXEL_UM:g} µm):")
    print(table([list(r.values()) for r in counts], list(counts[0])))
    if a.counts_only:
        record("tissue_mask", {"kidney_counts": counts}, a)
        return
    import torch
    torch.set_num_threads(a.threads)
    from nnunet_vasculature.demo.tiny_model import make_model_folder
    from nnunet_vasculature.metrics.surface_dice import surface_dice
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.model or make_model_folder(Path(tmp) / "model", spacing=(VOXEL_UM,) * 3, patch=(32, 64, 64),
                                              features=(4, 8, 16))
        predict(folder, make_volume((32, 64, 64), 0.5)[0], False)          # imports, warm-up
        for fill in a.fills:
            img, labels, share = make_volume(tuple(a.shape), fill)
            full, full_s, full_count, _, _, _ = predict(folder, img, False)
            masked, masked_s, count, timings, predictor, src = predict(folder, img, True)
            inside = predictor.tissue_mask(src).voxels()
            seg_full, seg_masked = full >= 0.5, masked >= 0.5
            rows.append({"fill (%)": round(100 * share, 1), "tiles": count.tiles, "run": count.run,
                         "skipped": count.skipped, "skipped (%)": round(100 * count.skipped / count.tiles, 1),
                         "mask (% of field)": round(100 * count.tissue_fraction, 1),
                         "full run (s)": round(full_s, 2), "masked run (s)": round(masked_s, 2),
                         "mask (s)": round(timings.get("tissue", 0.0), 3),
                         "time saved (%)": round(100 * (1 - masked_s / full_s), 1),
                         "equal inside mask": bool(np.array_equal(masked[inside], full[inside])),
                         "max diff outside": float(np.abs(masked - full)[~inside].max(initial=0.0)),
                         "SD masked vs full": round(float(surface_dice(seg_masked, seg_full, 1.0)), 6),
                         "SD full vs labels": round(float(surface_dice(seg_full, labels, 1.0)), 6),
                         "SD masked vs labels": round(float(surface_dice(seg_masked, labels, 1.0)), 6)})
            assert full_count.skipped == 0
    model = str(a.model) if a.model else "tiny random model (4-8-16 features, patch 32x64x64): passes and time only"
    print(f"volume {tuple(a.shape)} at {VOXEL_UM:g} µm, model {model}, no TTA, torch threads {a.threads}, "
          f"{len(os.sched_getaffinity(0))} cores")
    header = list(rows[0])
    print(table([[r[k] for k in header] for r in rows], header))
    record("tissue_mask", {"model": model, "rows": rows, "kidney_counts": counts}, a)


if __name__ == "__main__":
    main()
