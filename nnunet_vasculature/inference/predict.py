"""``nnunet-vasculature predict [sennet]``: memory-bounded prediction of whole kidneys to uint8 zarr.

Inputs: Kaggle TIFF slices, nnU-Net raw images and converted cases, and multiscale volumes (``hoa:NAME``,
OME-Zarr, N5, JPEG 2000 slices) at the pyramid level ``--level`` picks
(:mod:`nnunet_vasculature.inference.inputs`).

Output: the probability store of :mod:`nnunet_vasculature.io.store` (one uint8 array per kidney, the
model in the ``source`` attribute, the input's fingerprint in ``input``), or, for ``-o NAME.ome.zarr`` (the
default for multiscale inputs), an NGFF multiscale image (:class:`~nnunet_vasculature.io.ngff.NgffWriter`)
overlaying the source level. Planes are written in z order; an interrupted run started again with the same
arguments on the same input resumes from the first unwritten plane (NGFF: chunk row) and keeps the kidneys it
finished. Every kidney's run record is checked (:func:`~nnunet_vasculature.io.run_record.check_resumable`)
before the model is loaded: a kidney made with other settings or of another input is refused unless
``--overwrite``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.budget import check_memory
from nnunet_vasculature.inference.inputs import (
    NGFF_CHUNK_DEPTH,
    is_ngff_output,
    ngff_metadata,
    open_prediction_inputs,
    output_path,
)
from nnunet_vasculature.inference.options import DEFAULT_CHECKPOINT, PredictionOptions
from nnunet_vasculature.io import ngff, store
from nnunet_vasculature.io.input_spec import InputSpec, parse_input
from nnunet_vasculature.io.ngff import NgffWriter
from nnunet_vasculature.io.run_record import COMPLETE, RunRecord, check_resumable
from nnunet_vasculature.io.store import KidneyWriter
from nnunet_vasculature.io.volume_source import VolumeSource, fingerprint


def predict(inputs: InputSpec | Path | str, out: Path | None, options: PredictionOptions, device: str = "cuda",
            spacing: float | tuple[str, ...] | None = None, overwrite: bool = False, overlap: bool = True,
            level: int | str = "auto", remote: bool = False) -> Path:
    """Predict every kidney of ``inputs`` into ``out`` (a probability store, or an NGFF image for ``.ome.zarr``).

    Args:
        inputs: the parsed ``-i`` value (:func:`~nnunet_vasculature.io.input_spec.parse_input`), or its text
            (parsed here once with ``spacing``, ``level`` and ``remote``): a Kaggle kidney folder (or test/
            folder), an nnU-Net raw image, an imagesTs/imagesTr folder, or a multiscale input (``hoa:NAME``, an
            OME-Zarr image, an N5 multiscale folder, JPEG 2000 slices).
        out: the output zarr store, or ``NAME.ome.zarr``; None: ``<name>.ome.zarr`` for a multiscale input
            (:func:`~nnunet_vasculature.inference.inputs.output_path`).
        options: the model and how it is applied (recorded in the store's ``source``).
        device: ``cuda``, ``cpu`` or ``mps`` (checked before any work).
        spacing: ``--spacing``: voxel size (µm) when the input does not say, or the flag's words (``KIDNEY=UM``
            pairs too; :func:`~nnunet_vasculature.io.input_spec.parse_spacing`).
        overwrite: replace kidneys already in the store.
        overlap: read/prepare input and write planes in background threads while the network runs (False:
            all in this thread, in turn; the same planes).
        level: the pyramid level of a multiscale input (``"auto"``: nearest the model's spacing).
        remote: allow an ``hoa:`` dataset to be read over the network.

    Returns:
        The output path.
    """
    import zarr

    from nnunet_vasculature.inference.model import check_model_folder, resolve_device
    from nnunet_vasculature.inference.streaming import StreamingPredictor
    dev = resolve_device(device)
    check_model_folder(options.model_folder, options.folds, options.checkpoint)
    spec = parse_input(inputs, level, remote, spacing)
    sources = open_prediction_inputs(spec, options)
    out = output_path(spec, out, sources)
    todo = plan_outputs(out, sources, options, overwrite)
    if not todo:
        return out
    check_memory([src for src, _ in todo], options, str(dev), is_ngff_output(out))
    predictor = StreamingPredictor(options, dev, overlap=overlap)
    group = None if is_ngff_output(out) else zarr.open_group(str(out), mode="a")
    for src, run in todo:
        if group is None:
            sink = NgffWriter(out, src.name, src.shape, src.spacing, src.slice_ids, run.source, overwrite,
                              input_fingerprint=run.input, chunk_depth=NGFF_CHUNK_DEPTH,
                              **ngff_metadata(src, spec, options))
        else:
            sink = KidneyWriter(group, src.name, src.shape, src.spacing, src.slice_ids, run.source, overwrite,
                                input_fingerprint=run.input)
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
        if options.tissue_mask and predictor.tile_count is not None:
            print(f"{src.name}: {predictor.tile_count.describe()}")
        seconds = max(time.time() - started, 1e-9)
        where = out if group is None else f"{out}/{src.name}"
        print(f"{src.name}: {tuple(src.shape)} in {seconds:.1f} s ({np.prod(src.shape) / seconds / 1e6:.2f} M voxels/s)"
              f" -> {where}")
    return out


def plan_outputs(out: Path, sources: list[VolumeSource], options: PredictionOptions,
                 overwrite: bool = False) -> list[tuple[VolumeSource, RunRecord]]:
    """Check every kidney against what ``out`` already holds, before any model is loaded or anything written.

    A kidney finished by a run with the same options on the same input is kept (a line says so); an interrupted
    one is resumed by its writer; one made otherwise is a one-line UserError unless ``overwrite``.

    Args:
        out: the output (a probability store or an ``.ome.zarr`` image).
        sources: the input volumes.
        options: the prediction options.
        overwrite: replace whatever is there.

    Returns:
        The volumes to predict, each with its run record.
    """
    source = {"tool": "predict", "model": options.to_json()}
    group = None if overwrite else store.open_output(out)
    todo = []
    for src in sources:
        run = RunRecord(source, src.shape, src.spacing, fingerprint(src))
        if group is None:
            existing = None
        elif is_ngff_output(out):
            existing = ngff.existing_run(group)
        else:
            existing = store.existing_run(group, src.name)
        if check_resumable(existing, run, str(out), src.name, overwrite) == COMPLETE:
            print(f"{src.name}: already complete in {out} (same options and input), skipped")
        else:
            todo.append((src, run))
    return todo


def add_parsers(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Registers ``predict sennet`` (plain ``predict`` by the default competition word).

    Args:
        groups: the competition sub-parsers of each command (:func:`nnunet_vasculature.competitions.command_groups`).
    """
    p = groups["predict"].add_parser("sennet", help="predict kidneys slab by slab into a uint8 probability zarr",
                                     description="Predict SenNet kidneys (HiP-CT volumes) plane by plane into a "
                                                 "uint8 probability zarr, with memory independent of depth.")
    p.add_argument("-i", dest="input", required=True, metavar="INPUT",
                   help="Kaggle kidney folder (or test/ folder), nnU-Net raw image, imagesTs/imagesTr folder, "
                        "OME-Zarr image (NGFF 0.4/0.5), N5 multiscale folder, folder of JPEG 2000 slices, or "
                        "hoa:DATASET (a Human Organ Atlas dataset; local mirror, or --remote)")
    p.add_argument("-o", dest="output", type=Path,
                   help="output: probs.zarr (a uint8 array per kidney) or NAME.ome.zarr (an NGFF multiscale image "
                        "of one volume); default for OME-Zarr, N5, JPEG 2000 and hoa: inputs: ./<name>.ome.zarr; "
                        "required for the other inputs")
    p.add_argument("--level", default="auto", metavar="auto|N",
                   help="pyramid level of a multiscale input: auto (default: the level whose voxel size is nearest "
                        "the model's; the choice is printed) or N (0 = full resolution)")
    p.add_argument("--remote", action="store_true",
                   help="allow an hoa: dataset to be read over the network (anonymous Google Cloud Storage)")
    p.add_argument("--dry_run", action="store_true",
                   help="print per kidney the model-space shape, tiles, network passes and memory needed; "
                        "reads the plans and the input's metadata, runs no network, writes nothing")
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
    p.add_argument("--tissue_mask", action="store_true",
                   help="skip the tiles wholly outside the sample (mounting medium, found by a strided read of the "
                        "input, dilated by one patch): their voxels are background; inside the mask the "
                        "probabilities equal a full run's")
    p.add_argument("--spacing", nargs="+", metavar="UM|KIDNEY=UM",
                   help="voxel size (µm, 0.1 to 10000) when the input does not say (a known Kaggle kidney's too), "
                        "and/or KIDNEY=UM for one kidney (e.g. kidney_5=50.28 kidney_6=63.08)")
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
                                   tta_permutations=a.tta_permutations, tta_scale=a.tta_scale,
                                   tissue_mask=a.tissue_mask)
    level = a.level if str(a.level).strip().lower() == "auto" else _level_number(a.level)
    spacing = tuple(a.spacing) if a.spacing else None   # the flag's words: -i is parsed once, by the entry point
    if a.dry_run:
        from nnunet_vasculature.inference.budget import dry_run
        dry_run(a.input, options, spacing, level, a.remote, a.device, a.output)
        return
    if a.scheduler is None and a.scheduler_file is None:
        resolve_device(a.device)      # before any work (a remote cluster's workers check their own)
    if a.workers is not None or a.scheduler is not None or a.scheduler_file is not None:
        from nnunet_vasculature.inference.distributed import predict_distributed
        predict_distributed(a.input, a.output, options, a.device, spacing, a.overwrite, workers=a.workers,
                            scheduler_address=a.scheduler, scheduler_file=a.scheduler_file,
                            slab_planes=a.slab_planes, level=level, remote=a.remote)
        return
    predict(a.input, a.output, options, a.device, spacing, a.overwrite, overlap=not a.no_overlap, level=level,
            remote=a.remote)


def _level_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--level {text}: give 'auto' or a level number (0 = full resolution)") from None
    if value < 0:
        raise UserError(f"--level {text}: levels are numbered from 0 (full resolution)")
    return value
