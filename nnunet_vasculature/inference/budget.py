"""``predict --dry_run``: what a prediction will cost, before running it. For each input volume: the
model-space shape, the sliding-window tiles, the network passes and the memory needed, from the model's
plans and the input's metadata only (no checkpoint is read, no network runs, nothing is written).

- Geometry: :meth:`~nnunet_vasculature.inference.geometry.StreamingGeometry.plan` (nnU-Net's
  ``compute_new_shape``, padding and ``compute_steps_for_sliding_window``) on the **whole** volume: the
  non-zero crop that ``predict`` computes first needs a pass over every voxel, so the counts are an upper
  bound (exact for a volume without an all-zero border).
- Network passes: tiles x mirrorings (2^axes with nnU-Net's TTA; every axis of the patch, the default of
  nnU-Net's trainers, since the mirroring axes a checkpoint allows are not read) x the rotations /
  permutations of :class:`~nnunet_vasculature.inference.tta.TileTTA` x folds.
- Device memory: the buffers of the streaming predictor's row loop (as ``benchmarks/real_size.py``'s
  ``gpu_table`` lists them): accumulator ``C·pz·H·W·4``, weight sum and input window ``pz·H·W·4`` each,
  Gaussian ``pz·py·px·4``, then the larger of one tile's peak (weights of every fold in float32, plus a
  float16 copy under CUDA autocast, the activations of one tile, ``C·tile·12`` of per-tile temporaries) and
  the last row's division ``C·pz·H·W·4``. Activations are estimated with forward hooks on a meta-device
  network (no memory, no weights): the encoder stages' outputs (kept for the skip connections) plus the
  largest input + output of one layer; float16 on CUDA, float32 elsewhere.
- Host memory (beyond the interpreter, torch and nnU-Net themselves): the input windows and finished blocks
  queued by the overlap threads (:mod:`nnunet_vasculature.inference.pipeline`: 3 windows ``pz·H·W·4`` and
  3 blocks ``step·C·H·W·4``), the chunk rows a multiscale reader keeps (2 x chunk depth planes), the
  output writer's buffer, the weights; on the CPU also the device buffers above.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.inputs import (
    NGFF_CHUNK_DEPTH,
    ModelPlans,
    is_ngff_output,
    model_input_spacing,
    read_model_plans,
    spacing_line,
)
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.io.input_spec import InputSpec, open_input, parse_input
from nnunet_vasculature.io.pyramid import chunks_line
from nnunet_vasculature.io.volume_source import VolumeSource

GIB = 2 ** 30
QUEUED = 3          # overlap threads: queue depth 1 -> d + 1 queued/being built + the one in use


def network_footprint(plans: ModelPlans, classes: int, dtype_bytes: int) -> tuple[int, int]:
    """(parameters, activation bytes of one tile) of the plans' network, built on the meta device.

    Args:
        plans: the model's plans.
        classes: output channels.
        dtype_bytes: bytes per activation (2: float16 under CUDA autocast, 4: float32).

    Returns:
        (parameter count, estimated peak activation bytes of one forward pass of one tile).
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    cm = plans.configuration_manager
    with torch.device("meta"):
        network = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                         cm.network_arch_init_kwargs_req_import, 1, classes, allow_init=False,
                                         deep_supervision=False)
    params = sum(p.numel() for p in network.parameters())
    skips: list[int] = []
    largest = [0]

    def nbytes(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * dtype_bytes
        if isinstance(value, (list, tuple)):
            return sum(nbytes(v) for v in value)
        return 0

    def on_layer(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        largest[0] = max(largest[0], nbytes(inputs) + nbytes(output))

    def on_stage(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        skips.append(nbytes(output))

    hooks = [m.register_forward_hook(on_layer) for m in network.modules() if not list(m.children())]
    stages = getattr(getattr(network, "encoder", None), "stages", None)
    if stages is not None:
        hooks += [s.register_forward_hook(on_stage) for s in stages]
    with torch.inference_mode():
        network(torch.empty(1, 1, *plans.patch, device="meta"))
    for h in hooks:
        h.remove()
    return int(params), int(sum(skips) + largest[0])


def estimate(src: VolumeSource, plans: ModelPlans, options: PredictionOptions, classes: int, device: str,
             ngff: bool, slab_planes: int | None = None) -> dict:
    """The dry-run figures of one volume (see the module's description).

    Args:
        src: the input volume (metadata only is used).
        plans: the model's plans.
        options: the prediction options.
        classes: the network's output channels.
        device: ``cuda``/``cpu``/``mps`` (float16 activations on CUDA).
        ngff: whether the output is an NGFF image (its writer buffers a chunk row).
        slab_planes: the original planes of one task of ``predict --workers`` (None: the whole volume). The
            memory of the stream does not depend on its depth (a patch-deep window of whole planes), so a slab
            needs what the whole volume needs, except that a store's writer buffers at most the slab's planes.

    Returns:
        Plain values: shapes, ``tiles``, ``passes_per_tile``, ``network_passes``, byte counts.
    """
    from nnunet_vasculature.inference.geometry import StreamingGeometry
    from nnunet_vasculature.inference.tta import TileTTA
    cm, pm = plans.configuration_manager, plans.plans_manager
    spacing = [float(s) / options.tta_scale for s in cm.spacing]
    full = [(0, int(n)) for n in src.shape]
    geometry = StreamingGeometry.plan(src.shape, src.spacing, full, pm.transpose_forward, pm.transpose_backward,
                                      spacing, plans.patch, options.step_size,
                                      cm.configuration["resampling_fn_data_kwargs"],
                                      cm.configuration["resampling_fn_probabilities_kwargs"], src.name)
    mirror_axes = tuple(range(len(plans.patch))) if options.tta else None
    tta = TileTTA(plans.patch, cm.spacing, mirror_axes, options.tta_rotations, options.tta_permutations,
                  str(options.model_folder))
    tiles = int(np.prod([len(s) for s in geometry.tile_starts]))
    counts = None
    if options.tissue_mask:          # a strided read of the input: the same mask and count as predict's
        from nnunet_vasculature.inference.tissue import measure_tiles
        counts = measure_tiles(src, geometry, spacing)
    passes = tta.passes * 2 ** len(mirror_axes or ()) * len(options.folds)
    cuda = device.startswith("cuda")
    params, activations = network_footprint(plans, classes, 2 if cuda else 4)
    pz, py, px = plans.patch
    _, height, width = geometry.padded_shape
    plane, tile = pz * height * width, pz * py * px
    folds = len(options.folds)
    weights = folds * params * 4 + (params * 2 if cuda else 0)
    persistent = classes * plane * 4 + plane * 4 + plane * 4 + tile * 4
    device_bytes = persistent + max(weights + activations + classes * tile * 12, weights + classes * plane * 4)
    step_planes = max(1, int(round(pz * options.step_size)))
    chunk_depth = src.chunk_depth
    reader = 2 * chunk_depth * src.shape[1] * src.shape[2] * 4 if chunk_depth else 0
    writer_planes = min(NGFF_CHUNK_DEPTH, src.shape[0]) if ngff else min(8, slab_planes or 8)
    writer = writer_planes * src.shape[1] * src.shape[2]
    host = QUEUED * plane * 4 + QUEUED * step_planes * classes * height * width * 4 + reader + writer
    host += device_bytes if not cuda else folds * params * 4
    return {"name": src.name, "input_shape": list(src.shape), "input_spacing": list(src.spacing),
            "spacing_source": src.spacing_source, "chunk_count": src.chunk_count, "absent_chunks": src.absent_chunks,
            "model_spacing": spacing, **geometry.describe(), "patch": list(plans.patch),
            "tile_steps": [len(s) for s in geometry.tile_starts], "tiles": tiles, "passes_per_tile": passes,
            "network_passes": (tiles if counts is None else counts.run) * passes,
            "tissue": None if counts is None else counts.describe(), "parameters": params,
            "device_bytes": int(device_bytes), "host_bytes": int(host)}


def _model_figures(options: PredictionOptions) -> tuple[ModelPlans, int]:
    """(plans, output channels) of the model folder, from its plans and dataset.json only."""
    import json
    plans = read_model_plans(options.model_folder)
    try:
        dataset = json.loads((Path(options.model_folder) / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{options.model_folder}: dataset.json is not readable JSON ({e})") from None
    return plans, plans.plans_manager.get_label_manager(dataset).num_segmentation_heads


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The memory this machine can give a new allocation without swapping (Linux's ``MemAvailable``).

    Args:
        meminfo: the kernel's memory report.

    Returns:
        Bytes, or None where unknown (not Linux, an older kernel, an unreadable file).
    """
    try:
        for line in meminfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemAvailable" and value.split()[1:] == ["kB"]:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _device_memory(device: str) -> int | None:
    """Free bytes of the CUDA device (None on other devices or where torch cannot say)."""
    if not device.startswith("cuda"):
        return None
    import torch
    try:
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except (RuntimeError, AssertionError, ValueError):
        return None


def check_memory(sources: list[VolumeSource], options: PredictionOptions, device: str, ngff: bool,
                 workers: int = 1, slab_planes: int | None = None, worker_memory: int | None = None) -> None:
    """Refuse a prediction whose memory (:func:`estimate`) exceeds what this machine has, before any work.

    Host bytes are compared with ``MemAvailable`` (skipped where unknown), device bytes on CUDA with the
    device's free memory. The tissue mask is not measured here (it reads the input; memory does not depend on it).
    ``predict --workers N`` (a local cluster): every worker process predicts one slab at a time with its own
    predictor, so N times one slab's figures must fit (on CUDA: the workers sharing a device, ``cuda`` spread
    over the visible devices); where fewer workers would fit, the line says how many. A remote cluster
    (``worker_memory``): one slab is compared with the largest memory limit of its workers instead, and this
    machine's memory and device are not looked at.

    Args:
        sources: the input volumes (metadata only is used).
        options: the prediction options.
        device: ``cuda``/``cpu``/``mps``.
        ngff: whether the output is an NGFF image.
        workers: the processes predicting at once on this machine (``--workers``; 1: single-process ``predict``).
        slab_planes: the original planes of one task of a distributed run (None: the whole volume).
        worker_memory: a remote cluster's largest worker memory limit (bytes), instead of this machine's.

    Raises:
        UserError: naming the input, the figure and the machine's (and ``--workers K`` that would fit).
    """
    remote = worker_memory is not None
    host_free = worker_memory if remote else available_memory()
    device_free = None if remote else _device_memory(device)
    if host_free is None and device_free is None:
        return
    plans, classes = _model_figures(options)
    plain = replace(options, tissue_mask=False)
    local = 1 if remote else workers
    devices = 1 if device_free is None else _visible_devices(device)
    per = " per worker" if workers > 1 or remote else ""
    where = "each of the cluster's workers has at most" if remote else "this machine has"
    for src in sources:
        figures = estimate(src, plans, plain, classes, device, ngff, slab_planes)
        host, dev = figures["host_bytes"], figures["device_bytes"]
        if host_free is not None and host > host_free:
            raise UserError(f"{src.name}: predicting {tuple(src.shape)} needs about {_gib(host)} of memory{per}, "
                            f"{where} {_gib(host_free)} available (see --dry_run; choose a coarser --level or a "
                            f"smaller input)")
        if device_free is not None and dev > device_free:
            raise UserError(f"{src.name}: predicting {tuple(src.shape)} needs about {_gib(dev)}{per} on {device}, "
                            f"it has {_gib(device_free)} free (see --dry_run; choose a coarser --level or a smaller "
                            f"input)")
        host_fit = local if host_free is None else host_free // max(host, 1)
        device_fit = local if device_free is None else device_free // max(dev, 1) * devices
        if min(host_fit, device_fit) < local:
            if host_fit <= device_fit:
                need, have = f"{_gib(host)} of memory", f"this machine has {_gib(host_free)} available"
            else:
                need = f"{_gib(dev)} on {device}"
                have = f"{device} has {_gib(device_free)} free" + (f" ({devices} GPUs)" if devices > 1 else "")
            raise UserError(f"{src.name}: --workers {workers} need about {workers} x {need} (one slab each), {have}; "
                            f"use --workers {int(min(host_fit, device_fit))} (see --dry_run)")


def _visible_devices(device: str) -> int:
    """The devices local workers spread over: the visible GPUs for ``cuda``, else the one named."""
    if device != "cuda":
        return 1
    import torch
    return max(1, torch.cuda.device_count())


def dry_run(spec: InputSpec | str | Path, options: PredictionOptions, spacing: float | None = None,
            level: int | str = "auto", remote: bool = False, device: str = "cuda",
            out: Path | None = None) -> list[dict]:
    """Print (and return) the dry-run figures of every volume of ``spec``.

    Args:
        spec: the parsed ``-i`` value (or its text, parsed here with ``spacing``, ``level`` and ``remote``).
        options: the prediction options.
        spacing: ``--spacing`` (µm when the input does not say, or its words with ``KIDNEY=UM`` pairs; only
            with the ``-i`` text).
        level: the pyramid level of a multiscale input (only with the ``-i`` text).
        remote: allow an ``hoa:`` dataset's metadata to be read over the network (only with the ``-i`` text).
        device: where the networks would run (``-device``).
        out: the ``-o`` value (an ``.ome.zarr`` output buffers a chunk row).

    Returns:
        One dict per volume (:func:`estimate`).
    """
    from nnunet_vasculature.inference.model import check_model_folder
    spec = parse_input(spec, level, remote, spacing)
    check_model_folder(options.model_folder, options.folds, options.checkpoint)
    plans, classes = _model_figures(options)
    sources = open_input(spec, plans.spacing if spec.multiscale else None)
    ngff = is_ngff_output(out) if out is not None else spec.multiscale
    results = [estimate(src, plans, options, classes, device, ngff) for src in sources]
    tta = ("mirroring" if options.tta else "no mirroring") + (", rotations" if options.tta_rotations else "") + \
        (", permutations" if options.tta_permutations else "")
    print(f"dry run: {options.model_folder} ({plans.configuration}), patch {list(plans.patch)}, step "
          f"{options.step_size:g}, {len(options.folds)} fold(s), {tta}; no network runs, nothing is written"
          + ("; the tissue mask reads one plane in every quarter patch" if options.tissue_mask else ""))
    model_spacing = model_input_spacing(options)
    for src, r in zip(sources, results):
        print(spacing_line(src, model_spacing))
        if src.chunk_count and not src.absent_chunks:          # absent ones were said when the level was opened
            print(chunks_line(src))
        print(f"{r['name']}: input {tuple(r['input_shape'])} at {_fmt(r['input_spacing'])} -> model space "
              f"{tuple(r['model_shape'])} at {_fmt(r['model_spacing'])} (padded {tuple(r['padded_shape'])}; whole "
              f"volume, the non-zero crop is not computed)")
        print(f"  tiles {r['tiles']} ({' x '.join(map(str, r['tile_steps']))}), {r['passes_per_tile']} network "
              f"passes per tile -> {r['network_passes']} network passes")
        if r["tissue"]:
            print(f"  {r['tissue']}")
        print(f"  memory: {device} {_gib(r['device_bytes'])} (row buffers + {r['parameters']:,} "
              f"parameters x {len(options.folds)} fold(s) + one tile's activations); host {_gib(r['host_bytes'])} "
              f"beyond the interpreter, torch and nnU-Net")
    if len(results) > 1:
        print(f"total: {sum(r['tiles'] for r in results)} tiles, "
              f"{sum(r['network_passes'] for r in results)} network passes")
    return results


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / 2 ** 20:.1f} MiB"


def _fmt(spacing: list[float]) -> str:
    values = [f"{s:g}" for s in spacing]
    return (values[0] if len(set(values)) == 1 else " x ".join(values)) + " µm"


__all__ = ["network_footprint", "estimate", "available_memory", "check_memory", "dry_run"]
