"""``nnunet-vasculature predict [sennet]``: memory-bounded prediction of whole kidneys to uint8 zarr.

Output: the probability store of :mod:`nnunet_vasculature.io.store` (one uint8 array per kidney, the
model in the ``source`` attribute, the input's fingerprint in ``input``). Planes are written in z order; an
interrupted run started again with the same arguments on the same input resumes from the first unwritten
plane.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.options import DEFAULT_CHECKPOINT, PredictionOptions
from nnunet_vasculature.io.intensity import map_sources, model_mapping
from nnunet_vasculature.io.sources import fingerprint, open_inputs
from nnunet_vasculature.io.store import KidneyWriter


def predict(inputs: Path, out: Path, options: PredictionOptions, device: str = "cuda", spacing: float | None = None,
            overwrite: bool = False, overlap: bool = True) -> Path:
    """Predict every kidney of ``inputs`` into the probability store ``out``.

    Args:
        inputs: a Kaggle kidney folder (or test/ folder), an nnU-Net raw image or an imagesTs/imagesTr folder.
        out: the output zarr store.
        options: the model and how it is applied (recorded in the store's ``source``).
        device: ``cuda``, ``cpu`` or ``mps`` (checked before any work).
        spacing: voxel size (µm) when the input does not say.
        overwrite: replace kidneys already in the store.
        overlap: read/prepare input and write planes in background threads while the network runs (False:
            all in this thread, in turn; the same planes).

    Returns:
        ``out``.
    """
    import zarr

    from nnunet_vasculature.inference.model import check_model_folder, resolve_device
    from nnunet_vasculature.inference.streaming import StreamingPredictor
    dev = resolve_device(device)
    check_model_folder(options.model_folder, options.folds, options.checkpoint)
    out = Path(out)
    if out.exists() and not (out / "zarr.json").is_file():
        raise UserError(f"{out}: exists and is not a zarr store")
    sources = map_sources(open_inputs(inputs, spacing), model_mapping(options.model_folder))
    predictor = StreamingPredictor.from_options(options, dev, overlap=overlap)
    group = zarr.open_group(str(out), mode="a")
    source = {"tool": "predict", "model": options.to_json()}
    for src in sources:
        sink = KidneyWriter(group, src.name, src.shape, src.spacing, src.slice_ids, source, overwrite,
                            input_fingerprint=fingerprint(src))
        if sink.start:
            print(f"resuming {src.name} at plane {sink.start}/{src.shape[0]}")
        if sink.start >= src.shape[0]:
            sink.close()
            continue
        started = time.time()
        with tqdm(total=src.shape[0], initial=sink.start, desc=f"predict {src.name}", unit="plane") as bar:
            def write(z: int, planes: np.ndarray) -> None:
                sink(z, planes)
                bar.update(len(planes))
            predictor.predict(src, write, start=sink.start)
        sink.close()
        seconds = max(time.time() - started, 1e-9)
        print(f"{src.name}: {tuple(src.shape)} in {seconds:.1f} s ({np.prod(src.shape) / seconds / 1e6:.2f} M voxels/s)"
              f" -> {out}/{src.name}")
    return out


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Registers ``predict sennet`` (plain ``predict`` by the default competition word).

    Args:
        groups: the competition sub-parsers of each command (:func:`nnunet_vasculature.competitions.command_groups`).
    """
    p = groups["predict"].add_parser("sennet", help="predict kidneys slab by slab into a uint8 probability zarr",
                                     description="Predict SenNet kidneys (HiP-CT volumes) plane by plane into a "
                                                 "uint8 probability zarr, with memory independent of depth.")
    p.add_argument("-i", dest="input", type=Path, required=True,
                   help="Kaggle kidney folder (or test/ folder), nnU-Net raw image, or imagesTs/imagesTr folder")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output zarr, e.g. probs.zarr")
    p.add_argument("-d", dest="dataset_id", help="dataset ID/name of the trained model")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-tr", dest="trainer", default="VesselTransferTrainer")
    p.add_argument("-p", dest="plans", default="nnUNetPlans_Task008")
    p.add_argument("-m", dest="model_folder", type=Path, help="model folder (instead of -d/-c/-tr/-p)")
    p.add_argument("-f", dest="folds", nargs="+", default=["0"], help="folds to average (default 0)")
    p.add_argument("-chk", dest="checkpoint", default=DEFAULT_CHECKPOINT)
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
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> None:
    from nnunet_vasculature.inference.model import model_folder_from_args, resolve_device
    if a.model_folder is None and a.dataset_id is None:
        raise UserError("give -d ID (with -c/-tr/-p) or -m MODEL_FOLDER")
    folder = a.model_folder or model_folder_from_args(a.dataset_id, a.configuration, a.trainer, a.plans)
    options = PredictionOptions.of(folder, a.folds, checkpoint=a.checkpoint, tta=not a.disable_tta,
                                   step_size=a.step_size, tta_rotations=a.tta_rotations,
                                   tta_permutations=a.tta_permutations, tta_scale=a.tta_scale)
    if a.scheduler is None and a.scheduler_file is None:
        resolve_device(a.device)      # before any work (a remote cluster's workers check their own)
    if a.workers is not None or a.scheduler is not None or a.scheduler_file is not None:
        from nnunet_vasculature.inference.distributed import predict_distributed
        predict_distributed(a.input, a.output, options, a.device, a.spacing, a.overwrite, workers=a.workers,
                            scheduler_address=a.scheduler, scheduler_file=a.scheduler_file,
                            slab_planes=a.slab_planes)
        return
    predict(a.input, a.output, options, a.device, a.spacing, a.overwrite, overlap=not a.no_overlap)
