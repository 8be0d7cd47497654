"""``nnunet-vasculature predict``: memory-bounded prediction of whole kidneys to uint8 zarr.

Output: the probability store of :mod:`nnunet_vasculature.io.store` (one uint8 array per kidney, the
model in the ``source`` attribute). Planes are written in z order; an interrupted run started again with
the same arguments resumes from the first unwritten plane.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.intensity import map_sources, model_mapping
from nnunet_vasculature.io.paths import nnunet_folder
from nnunet_vasculature.io.sources import open_inputs
from nnunet_vasculature.io.store import KidneyWriter
from nnunet_vasculature.trainers import ext_trainer_value


def model_folder_from_args(dataset_id: str, configuration: str, trainer: str, plans: str) -> Path:
    """``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``; it must hold a trained model."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    results = nnunet_folder("nnUNet_results", "pass -m MODEL_FOLDER")
    try:
        folder = Path(get_output_folder(dataset_id, trainer, plans, configuration))
    except RuntimeError:
        raise UserError(f"dataset {dataset_id}: not found in nnUNet_raw, nnUNet_preprocessed or {results}") from None
    if not (folder / "plans.json").is_file():
        trained = sorted(p.name for p in folder.parent.glob("*__*__*") if (p / "plans.json").is_file()) \
            if folder.parent.is_dir() else []
        raise UserError(f"{folder}: no trained model for -tr {trainer} -p {plans} -c {configuration}; trained "
                        f"in {folder.parent.name}: {', '.join(trained) or 'none'}")
    return folder


def predict(inputs: Path, out: Path, model_folder: Path, folds: Sequence[int | str],
            checkpoint: str = "checkpoint_final.pth", device: str = "cuda", tta: bool = True,
            step_size: float = 0.5, spacing: float | None = None, overwrite: bool = False,
            overlap: bool = True, tta_rotations: bool = False, tta_permutations: bool = False,
            tta_scale: float = 1.0) -> Path:
    """``overlap``: read/prepare input and write planes in background threads while the network runs
    (False: all in this thread, in turn; the same planes). ``tta_rotations``, ``tta_permutations``,
    ``tta_scale``: see :mod:`nnunet_vasculature.inference.tta` (recorded in the store's ``source`` when on)."""
    import torch  # here, not at the top: `--help` and `env` start without torch
    import zarr

    from nnunet_vasculature.inference.streaming import StreamingPredictor
    from nnunet_vasculature.inference.tta import check_scale, tta_options
    tta_scale = check_scale(tta_scale)
    os.environ["nnUNet_extTrainer"] = ext_trainer_value()
    sources = map_sources(open_inputs(inputs, spacing), model_mapping(model_folder))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA is not available here; pass -device cpu")
    predictor = StreamingPredictor(model_folder, folds, checkpoint, dev, tta, step_size, overlap=overlap,
                                   tta_rotations=tta_rotations, tta_permutations=tta_permutations, tta_scale=tta_scale)
    out = Path(out)
    if out.exists() and not (out / "zarr.json").is_file():
        raise UserError(f"{out}: exists and is not a zarr store")
    group = zarr.open_group(str(out), mode="a")
    source = {"tool": "predict", "model": {"folder": str(Path(model_folder).resolve()),
                                           "folds": [str(f) for f in folds], "checkpoint": checkpoint,
                                           "tta": tta, "step_size": step_size,
                                           **tta_options(tta_rotations, tta_permutations, tta_scale)}}
    for src in sources:
        sink = KidneyWriter(group, src.name, src.shape, src.spacing, src.slice_ids, source, overwrite)
        if sink.start:
            print(f"resuming {src.name} at plane {sink.start}/{src.shape[0]}")
        if sink.start >= src.shape[0]:
            sink.close()
            continue
        t0 = time.time()
        with tqdm(total=src.shape[0], initial=sink.start, desc=f"predict {src.name}", unit="plane") as bar:
            def write(z: int, planes: np.ndarray) -> None:
                sink(z, planes)
                bar.update(len(planes))
            predictor.predict(src, write, start=sink.start)
        sink.close()
        n = np.prod(src.shape)
        print(f"{src.name}: {tuple(src.shape)} in {time.time() - t0:.1f} s "
              f"({n / max(time.time() - t0, 1e-9) / 1e6:.2f} M voxels/s) -> {out}/{src.name}")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict kidneys slab by slab into a uint8 probability zarr")
    p.add_argument("-i", dest="input", type=Path, required=True,
                   help="Kaggle kidney folder (or test/ folder), nnU-Net raw image, or imagesTs/imagesTr folder")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output zarr, e.g. probs.zarr")
    p.add_argument("-d", dest="dataset_id", help="dataset ID/name of the trained model")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-tr", dest="trainer", default="VesselTransferTrainer")
    p.add_argument("-p", dest="plans", default="nnUNetPlans_Task008")
    p.add_argument("-m", dest="model_folder", type=Path, help="model folder (instead of -d/-c/-tr/-p)")
    p.add_argument("-f", dest="folds", nargs="+", default=["0"], help="folds to average (default 0)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth")
    p.add_argument("-device", dest="device", default="cuda", choices=("cuda", "cpu", "mps"))
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--tta_rotations", action="store_true",
                   help="also predict each tile rotated by 90/180/270 degrees in-plane (patch square in y/x); "
                        "with mirroring 2x the network passes")
    p.add_argument("--tta_permutations", action="store_true",
                   help="also predict each tile with its axes permuted (cubic patch, isotropic spacing); "
                        "6x the network passes")
    p.add_argument("--tta_scale", type=float, default=1.0, metavar="F",
                   help="test-time up-scaling: predict at the model's spacing / F (e.g. 1.5 or 2; about F^3 the "
                        "time), probabilities resampled back to the input grid")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (fraction of the patch)")
    p.add_argument("--spacing", type=float, help="voxel size (µm) when the input does not say")
    p.add_argument("--overwrite", action="store_true", help="replace kidneys already in the output")
    p.add_argument("--no_overlap", action="store_true",
                   help="read, predict and write in turn in one thread (debugging, timing); same output")
    many = p.add_argument_group("many workers (dask.distributed; default: one process)")
    where = many.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local dask cluster of N worker processes (on CUDA: one per GPU)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="use the dask cluster at ADDRESS (tcp://host:8786)")
    where.add_argument("--scheduler_file", type=Path, metavar="FILE",
                       help="use the dask cluster of this scheduler file")
    many.add_argument("--slab_planes", type=int, default=256,
                      help="planes per task (default 256; part of the run's parameters: keep it to resume)")

    def run(a: argparse.Namespace) -> None:
        if a.model_folder is None and a.dataset_id is None:
            raise UserError("give -d ID (with -c/-tr/-p) or -m MODEL_FOLDER")
        folder = a.model_folder or model_folder_from_args(a.dataset_id, a.configuration, a.trainer, a.plans)
        if a.workers is not None or a.scheduler is not None or a.scheduler_file is not None:
            from nnunet_vasculature.inference.distributed import predict_distributed
            predict_distributed(a.input, a.output, folder, a.folds, a.checkpoint, a.device, not a.disable_tta,
                                a.step_size, a.spacing, a.overwrite, workers=a.workers, scheduler_address=a.scheduler,
                                scheduler_file=a.scheduler_file, slab_planes=a.slab_planes,
                                tta_rotations=a.tta_rotations, tta_permutations=a.tta_permutations,
                                tta_scale=a.tta_scale)
            return
        predict(a.input, a.output, folder, a.folds, a.checkpoint, a.device, not a.disable_tta, a.step_size,
                a.spacing, a.overwrite, overlap=not a.no_overlap, tta_rotations=a.tta_rotations,
                tta_permutations=a.tta_permutations, tta_scale=a.tta_scale)

    p.set_defaults(func=run)
