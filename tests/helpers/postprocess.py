"""Synthetic SenNet kidneys for the post-processing tests: labels as slice TIFFs, probabilities in a zarr store
laid out as ``predict`` writes it (written here with zarr directly, not with our store writer)."""
from pathlib import Path

import numpy as np
import tifffile
import zarr
from scipy import ndimage as ndi


def _kidney(rng, shape=(24, 30, 28)):
    f = ndi.gaussian_filter(rng.random(shape), 2)
    gt = f > np.quantile(f, 0.85)
    prob = ndi.gaussian_filter(gt.astype(float), 1.2) * 0.8 + rng.random(shape) * 0.25
    prob[rng.random(shape) > 0.995] = 0.9          # speckle that component removal can clean
    return gt, np.clip(prob, 0, 1)


def _write_kidney(root: Path, name: str, gt, prob):
    lab = root / name / "labels"
    lab.mkdir(parents=True)
    for z in range(gt.shape[0]):
        tifffile.imwrite(lab / f"{z:04d}.tif", gt[z].astype(np.uint8) * 255)
    g = zarr.open_group(str(root / "probs.zarr"), mode="a")
    a = g.create_array(name, shape=prob.shape, chunks=(1, *prob.shape[1:]), dtype="uint8")
    a[:] = np.rint(prob * 255).astype(np.uint8)
    a.attrs.update({"kidney": name, "slice_ids": [f"{name}_{z:04d}" for z in range(gt.shape[0])], "complete": True,
                    "source": {"tool": "predict"}})                     # predict's record
    return lab
