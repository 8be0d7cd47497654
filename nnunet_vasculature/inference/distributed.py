"""``predict`` on many workers: z-slabs of every kidney as one dask.distributed task list.

Each task opens its input itself (only the input path, spacing and kidney name travel through the
scheduler), predicts original planes [z0, z1) with :meth:`StreamingPredictor.predict` (``start``/``end``;
the predictor is built once per worker process and parameters) and writes them into the probability
store. Slab borders are multiples of the store's one-plane chunks, so no two tasks write the same chunk
and no lock is needed; a task finishes by setting its own one-element chunk of ``_slabs/<kidney>``
(uint8, 1 = done). Only the client writes attributes.

The store's kidney array also gets the run record of :mod:`nnunet_vasculature.io.run_record` with the
slab size (``slab_planes``, ``params_hash``) and the input's fingerprint, checked for every kidney before any
array is created or any worker started (:func:`~nnunet_vasculature.io.run_record.check_resumable`): a rerun
with the same parameters on the same input keeps the finished kidneys (also those of a single-process run)
and computes only the slabs not marked done; a rerun with others or on another input is refused (unless
``overwrite``). Each task (a :class:`SlabTask`) writes through the store's one writer
(``KidneyWriter.slab``). The model folder and the device are checked before any slab is submitted (on a
remote cluster: on every worker); ``--workers`` beyond this machine's cores, or whose slabs together need more
memory than it has (:func:`~nnunet_vasculature.inference.budget.check_memory`, before any output or worker
exists; a remote cluster: one slab against its workers' memory limit), is refused. Once every slab is
done ``complete`` is set and the store reads like one written by single-process ``predict``. dask's
``retries`` re-run the slab of a failed task or lost worker. ``planes_done`` is kept at the planes done from
plane 0 on, so an interrupted run can also be finished by single-process ``predict``.

An ``.ome.zarr`` output (:class:`~nnunet_vasculature.io.ngff.NgffWriter`) is written alike: the slabs are
whole chunk rows of the image's level ``0`` (``slab_planes`` rounded up to a multiple of the 64-plane chunks,
so again no lock), the marks live in the image's ``_slabs`` group, the parameter hash and the input's
fingerprint in its run record; once every slab is done the client builds the pyramid, marks the image
complete and removes ``_slabs``.

With the options' ``tissue_mask`` each worker measures the kidney's tissue mask itself, once per kidney
(:meth:`StreamingPredictor.tissue_mask`: a strided read, deterministic, so every slab skips the tiles a
single-process run skips).

Each slab also predicts the tile rows overlapping its neighbours: about (patch depth - step) model
planes more per slab, e.g. 1.25x the tiles of a single run for 256-plane slabs, a 128-plane patch and
step 0.5 at the model's spacing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nnunet_vasculature.errors import VERBOSE_ENV, UserError
from nnunet_vasculature.inference.budget import check_memory
from nnunet_vasculature.inference.inputs import (
    NGFF_CHUNK_DEPTH,
    is_ngff_output,
    ngff_metadata,
    open_prediction_inputs,
    output_path,
)
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.io import ngff, store
from nnunet_vasculature.io.input_spec import InputSpec, open_input, parse_input
from nnunet_vasculature.io.intensity import map_sources, model_mapping
from nnunet_vasculature.io.ngff import NgffWriter
from nnunet_vasculature.io.run_record import COMPLETE, NEW, RunRecord, check_resumable
from nnunet_vasculature.io.store import KidneyWriter, create_kidney_array
from nnunet_vasculature.io.volume_source import VolumeSource, fingerprint

SLAB_PLANES = 256           # default slab depth (original planes); a multiple of the store's 1-plane chunks
PROGRESS_GROUP = "_slabs"   # <store>/_slabs/<kidney>: one uint8 per slab, 1 = done
WRITE_PLANES = 8            # a task writes its planes in blocks of this many
SlabHook = Callable[[str, int], None]

_WORKER_CACHE: dict[str, tuple[Any, Any]] = {}      # per worker process: "predictor" / "sources" -> (key, value)


def slab_bounds(depth: int, slab_planes: int) -> list[tuple[int, int]]:
    """Original planes [z0, z1) of each slab of a kidney ``depth`` planes deep."""
    return [(z, min(depth, z + slab_planes)) for z in range(0, depth, slab_planes)]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSetup:
    """What every task of a run shares: how a worker opens the input and builds its predictor (only paths and
    options travel through the scheduler)."""
    spec: InputSpec                  # the -i value parsed (a local path resolved, the level chosen pinned)
    options: PredictionOptions
    device: str
    torch_threads: int | None
    on_slab: SlabHook | None = None  # called in the worker before each slab (tests inject failures)


@dataclass(frozen=True)
class SlabTask:
    """One task: original planes [z0, z1) of ``kidney`` into ``array`` of the zarr group at ``out`` (whole
    chunks), then mark ``progress[slab]`` done."""
    setup: WorkerSetup
    kidney: str
    slab: int
    z0: int
    z1: int
    scan: tuple                      # (crop box, intensity statistics) of the kidney, as the store keeps it
    out: str
    array: str
    progress: str
    flush: int


@dataclass
class _Target:
    """Where one kidney's slabs go: ``array`` (a key of the zarr group at ``out``: the kidney's array of a
    probability store, or level ``0`` of an NGFF image), its slab marks ``progress`` (a key of the same group),
    the slab depth, and for an NGFF image the writer whose ``close`` builds the pyramid."""
    out: Path
    array: str
    progress: str
    slab_planes: int
    todo: list[int]
    flush: int = 8
    writer: Any = None

    def group(self) -> Any:
        import zarr
        return zarr.open_group(str(self.out), mode="r+")


def predict_distributed(inputs: InputSpec | Path | str, out: Path | None, options: PredictionOptions,
                        device: str = "cuda", spacing: float | None = None, overwrite: bool = False,
                        workers: int | None = None,
                        scheduler_address: str | None = None, scheduler_file: Path | None = None,
                        slab_planes: int = SLAB_PLANES, retries: int = 2, torch_threads: int | None = None,
                        on_slab: SlabHook | None = None, level: int | str = "auto",
                        remote: bool = False) -> dict[str, list[int]]:
    """Predict every kidney of ``inputs`` into ``out`` (a probability store or an NGFF image) on a dask cluster.

    Args:
        inputs: as for single-process ``predict`` (multiscale inputs included): the parsed ``-i`` value, or its
            text (parsed here once, with ``spacing``, ``level`` and ``remote``).
        out: the output zarr store or ``NAME.ome.zarr`` (None: as single-process ``predict`` chooses).
        options: the prediction options (the store's record and part of the parameter hash).
        device: where the workers run the networks.
        spacing: voxel size (µm) when the input does not say.
        overwrite: replace kidneys already in the store.
        workers: start a ``LocalCluster`` of this many processes, or
        scheduler_address: use the cluster at this address, or
        scheduler_file: the cluster described by this scheduler file.
        slab_planes: original planes per task (an NGFF output: rounded up to a multiple of its chunk depth).
        retries: dask's retries of a failed task.
        torch_threads: torch threads per worker (default: the cores divided among a local cluster's
            workers; dask's own setting, one, on an existing cluster).
        on_slab: ``on_slab(kidney, slab)`` is called in the worker before each slab (tests inject failures).
        level: the pyramid level of a multiscale input (``"auto"``: nearest the model's spacing).
        remote: allow an ``hoa:`` dataset to be read over the network.

    Returns:
        The slabs computed, per kidney.
    """
    if sum(x is not None for x in (workers, scheduler_address, scheduler_file)) != 1:
        raise UserError("give one of --workers N, --scheduler ADDRESS, --scheduler_file FILE")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    if workers is not None and workers > usable_cores():
        raise UserError(f"--workers {workers}: this machine has {usable_cores()} cores; use at most "
                        f"{usable_cores()}, or --scheduler ADDRESS for a cluster")
    if slab_planes < 1:
        raise UserError(f"--slab_planes {slab_planes}: need at least 1")
    from nnunet_vasculature.inference.model import check_model_folder, resolve_device
    check_model_folder(options.model_folder, options.folds, options.checkpoint)
    if workers is not None:
        resolve_device(device)          # the local workers see this machine's devices
    spec = parse_input(inputs, level, remote, spacing)
    sources = open_prediction_inputs(spec, options)
    out = output_path(spec, out, sources)
    source = {"tool": "predict", "model": options.to_json()}
    image = is_ngff_output(out)
    existing_group = None if overwrite else store.open_output(out)
    runs, states = {}, {}
    for src in sources:             # every kidney checked before anything is created
        planes = _ngff_slab_planes(src, slab_planes) if image else slab_planes
        runs[src.name] = RunRecord(source, src.shape, src.spacing, fingerprint(src), planes)
        existing = None if existing_group is None else (ngff.existing_run(existing_group) if image else
                                                        store.existing_run(existing_group, src.name))
        states[src.name] = check_resumable(existing, runs[src.name], str(out), src.name, overwrite)
    pending = [src for src in sources if states[src.name] != COMPLETE]
    # the one (client, cluster) of the run, closed below: a remote cluster is asked for its memory before anything
    # exists; a local one is started only once there are slabs to compute
    connection = _connect(None, scheduler_address, scheduler_file, device) if workers is None and pending else None
    try:
        if connection is not None:
            limit = _worker_memory(connection[0])
            if limit is not None:
                check_memory(pending, options, device, image, slab_planes=slab_planes, worker_memory=limit)
        elif workers is not None:   # N processes of this machine, one slab each: before any is started
            check_memory(pending, options, device, image, workers, slab_planes)
        targets = _prepare_targets(out, sources, runs, states, spec, options, overwrite, image)
        jobs = {src.name: src for src in sources if targets[src.name].todo}
        if not jobs:
            print(f"{out}: every kidney is already complete")
            return {}
        if workers is not None and torch_threads is None and not device.startswith("cuda"):
            torch_threads = max(1, (os.cpu_count() or 1) // workers)
        chosen = sources[0].level                   # every worker reads the level chosen here
        pinned = spec.absolute() if chosen is None else dataclasses.replace(spec.absolute(), level=chosen)
        setup = WorkerSetup(pinned, options, device, torch_threads, on_slab)
        connection = connection or _connect(workers, None, None, device)
        return _run_slabs(connection[0], jobs, targets, setup, retries)
    finally:
        if connection is not None:
            connection[0].close()
            if connection[1] is not None:
                connection[1].close()


def _prepare_targets(out: Path, sources: list[VolumeSource], runs: dict[str, RunRecord], states: dict[str, str],
                     spec: InputSpec, options: PredictionOptions, overwrite: bool, image: bool) -> dict[str, _Target]:
    """Create (or take up) every kidney's output as its checked state says; finish an NGFF image whose slabs are
    all done (an interruption of its last step)."""
    import zarr
    group = None if image else zarr.open_group(str(out), mode="a")
    targets = {src.name: (_prepare_ngff(out, src, runs[src.name], states[src.name], spec, options, overwrite)
                          if image else _prepare(out, group, src, runs[src.name], states[src.name]))
               for src in sources}
    for name in [n for n, t in targets.items() if not t.todo and t.writer is not None]:
        _finalize_ngff(targets[name])
    return targets


def _run_slabs(client: Any, jobs: dict[str, VolumeSource], targets: dict[str, _Target], setup: WorkerSetup,
               retries: int) -> dict[str, list[int]]:
    """Run the slabs of ``jobs`` on the cluster of ``client`` (its workers checked first), then finish the
    outputs; the slabs computed, per kidney."""
    done: dict[str, list[int]] = {name: [] for name in jobs}
    try:
        _check_workers(client, setup)
        errors = _run(client, jobs, targets, setup, retries, done)
    finally:
        for name in jobs:
            _finalize(targets[name])
    if errors:
        raise UserError(f"{len(errors)} slab(s) failed ({errors[0]}); run the same command again to resume")
    return {name: sorted(s) for name, s in done.items()}


def _worker_memory(client: Any) -> int | None:
    """The largest memory limit of the cluster's workers (dask's ``memory_limit``), or None where some worker has
    none or the cluster has no worker yet (then the memory is not checked)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:               # a dask without n_workers lists every worker
        info = client.scheduler_info()
    limits = [worker.get("memory_limit") for worker in info.get("workers", {}).values()]
    if not limits or not all(isinstance(limit, int) and limit > 0 for limit in limits):
        return None
    return max(limits)


def _prepare(out: Path, group: Any, src: VolumeSource, run: RunRecord, state: str) -> _Target:
    """Create (or take up) the kidney's array and slab marks, as ``state`` (checked) says; the slabs to compute."""
    n = len(slab_bounds(src.shape[0], run.slab_planes))
    progress = group.require_group(PROGRESS_GROUP)
    target = _Target(Path(out), src.name, f"{PROGRESS_GROUP}/{src.name}", run.slab_planes, [], WRITE_PLANES)
    if state == COMPLETE:
        print(f"{src.name}: already complete in {out} (same options and input), skipped")
        return target
    if state == NEW:
        create_kidney_array(group, src.name, run, src.slice_ids)
        progress.create_array(src.name, shape=(n,), chunks=(1,), dtype="uint8", fill_value=0, overwrite=True)
        target.todo = list(range(n))
        return target
    marks = progress[src.name][:] if src.name in progress else np.zeros(n, np.uint8)
    target.todo = [i for i in range(n) if not marks[i]]
    print(f"resuming {src.name}: {n - len(target.todo)} of {n} slabs already done")
    return target


def _ngff_slab_planes(src: VolumeSource, slab_planes: int) -> int:
    """``slab_planes`` rounded up to whole chunk rows of the NGFF output (a note says so)."""
    depth = min(NGFF_CHUNK_DEPTH, src.shape[0])
    aligned = -(-slab_planes // depth) * depth
    if aligned != slab_planes:
        print(f"note: --slab_planes {slab_planes} rounded up to {aligned}, a multiple of the output's "
              f"{depth}-plane chunks")
    return aligned


def _prepare_ngff(out: Path, src: VolumeSource, run: RunRecord, state: str, spec: InputSpec,
                  options: PredictionOptions, overwrite: bool) -> _Target:
    """Create (or resume) the NGFF image and its slab marks, as ``state`` (checked) says; slabs are whole chunk
    rows of level 0."""
    depth = min(NGFF_CHUNK_DEPTH, src.shape[0])
    n = len(slab_bounds(src.shape[0], run.slab_planes))
    target = _Target(Path(out), "0", f"{PROGRESS_GROUP}/{src.name}", run.slab_planes, [], depth)
    if state == COMPLETE:
        print(f"{src.name}: already complete in {out} (same options and input), skipped")
        return target
    writer = NgffWriter(out, src.name, src.shape, src.spacing, src.slice_ids, run.source, overwrite,
                        input_fingerprint=run.input, slab_planes=run.slab_planes, chunk_depth=depth,
                        **ngff_metadata(src, spec, options))
    target.writer = writer
    image = writer.group
    if target.progress in image:
        marks = image[target.progress][:]
        target.todo = [i for i in range(n) if not marks[i]]
        print(f"resuming {src.name}: {n - len(target.todo)} of {n} slabs already done")
    else:
        image.require_group(PROGRESS_GROUP).create_array(src.name, shape=(n,), chunks=(1,), dtype="uint8",
                                                         fill_value=0, overwrite=True)
        target.todo = list(range(n))
    return target


def _check_workers(client: Any, setup: WorkerSetup) -> None:
    """Every worker can run the networks on ``device`` and load the model: one line otherwise, before any slab."""
    problems = {w: p for w, p in client.run(_worker_problem, setup).items() if p}
    if problems:
        worker, problem = next(iter(problems.items()))
        raise UserError(f"{problem} (on {len(problems)} of the cluster's workers, e.g. {worker})")


def _worker_problem(setup: WorkerSetup) -> str | None:
    """In a worker: why it cannot predict (the device or the model), or None."""
    try:
        _predictor(setup)
    except UserError as e:
        return str(e)
    return None


def _connect(workers: int | None, address: str | None, scheduler_file: Path | None, device: str) -> tuple:
    """(client, cluster started here or None)."""
    from distributed import Client, LocalCluster
    try:
        if address is not None:
            return Client(address, timeout="30s"), None
        if scheduler_file is not None:
            if not Path(scheduler_file).is_file():
                raise UserError(f"{scheduler_file}: no such scheduler file")
            return Client(scheduler_file=str(scheduler_file), timeout="30s"), None
    except OSError as e:
        raise UserError(f"cannot reach the dask scheduler {address or scheduler_file}: {e}") from None
    if device.startswith("cuda"):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            print("note: dask_cuda is not installed: the workers choose GPU (worker number) modulo (GPUs "
                  "visible) themselves; `pip install dask-cuda` pins one GPU per worker")
        else:
            cluster = LocalCUDACluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
            return Client(cluster), cluster
    # a failed slab is reported by the client as one line; the workers' own log of it (dask logs each failed
    # task with its traceback) is kept for NNUNET_VASCULATURE_VERBOSE=1
    quiet = logging.WARNING if os.environ.get(VERBOSE_ENV) == "1" else logging.CRITICAL
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=quiet)
    return Client(cluster), cluster


def _run(client: Any, jobs: dict[str, VolumeSource], targets: dict[str, _Target], setup: WorkerSetup,
         retries: int, done: dict[str, list[int]]) -> list[str]:
    """Scan each kidney once (crop box, intensity statistics), then every slab; error messages."""
    from distributed import as_completed
    from tqdm import tqdm
    scans = {}
    for name in jobs:
        old = targets[name].group()[targets[name].array].attrs.get("scan")
        scans[name] = old if old is not None else client.submit(_scan_task, setup, name, retries=retries, pure=False)
    for name, s in scans.items():
        if not isinstance(s, list):
            scans[name] = s = json.loads(json.dumps(s.result()))      # plain lists, as the store keeps it
            targets[name].group()[targets[name].array].attrs["scan"] = s
    futures = []
    for name, src in jobs.items():
        target = targets[name]
        bounds = slab_bounds(src.shape[0], target.slab_planes)
        for i in target.todo:
            task = SlabTask(setup, name, i, bounds[i][0], bounds[i][1], tuple(scans[name]),
                            str(target.out.resolve()), target.array, target.progress, target.flush)
            futures.append(client.submit(_slab_task, task, retries=retries, pure=False))
    errors = []
    with tqdm(total=len(futures), desc="predict slabs", unit="slab") as bar:
        for f in as_completed(futures):
            if f.status == "error":
                e = f.exception()
                errors.append(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            else:
                name, slab, _ = f.result()
                done[name].append(slab)
            bar.update(1)
    return errors


def _finalize(target: _Target) -> None:
    """A store's kidney: ``complete`` once every slab is done, ``planes_done`` the planes done from plane 0 on.
    An NGFF image: once every slab is done, the pyramid is built and the image marked complete."""
    if target.writer is not None:
        _finalize_ngff(target)
        return
    group = target.group()
    arr = group[target.array]
    marks = group[target.progress][:]
    bounds = slab_bounds(arr.shape[0], target.slab_planes)
    first_missing = next((i for i, m in enumerate(marks) if not m), len(marks))
    planes = bounds[first_missing - 1][1] if first_missing else 0
    arr.attrs.update({"planes_done": planes, "complete": bool(marks.all())})


def _finalize_ngff(target: _Target) -> None:
    """Build the NGFF image's pyramid once every slab is marked done (the client's last step)."""
    image = target.writer.group
    if not image[target.progress][:].all():
        return
    target.writer.written_elsewhere(target.writer.shape[0])
    target.writer.close()
    del image[PROGRESS_GROUP]


# ---- in the workers ---------------------------------------------------------------------------
def _cached(kind: str, key: Any, make: Callable[[], Any]) -> Any:
    """One value per kind and worker process, rebuilt when its key changes."""
    old = _WORKER_CACHE.get(kind)
    if old is None or old[0] != key:
        _WORKER_CACHE.pop(kind, None)
        _WORKER_CACHE[kind] = (key, make())
    return _WORKER_CACHE[kind][1]


def _source(setup: WorkerSetup, name: str) -> VolumeSource:
    folder = setup.options.model_folder
    key = (setup.spec, str(folder))
    srcs = _cached("sources", key,
                   lambda: {s.name: s for s in map_sources(open_input(setup.spec, log=None),
                                                           model_mapping(folder), log=lambda m: None)})
    if name not in srcs:
        raise UserError(f"{setup.spec}: no kidney '{name}' (any more)")
    return srcs[name]


def _scan_task(setup: WorkerSetup, name: str) -> tuple:
    from nnunet_vasculature.inference.streaming import StreamingPredictor
    return StreamingPredictor.scan(_source(setup, name))


def _worker_device(device: str) -> str:
    """``cuda`` on a worker that sees several GPUs: GPU (worker number) modulo their number."""
    import torch
    if device != "cuda" or torch.cuda.device_count() < 2:
        return device
    from distributed import get_worker
    try:
        return f"cuda:{int(get_worker().name) % torch.cuda.device_count()}"
    except (ValueError, TypeError):
        return device


def _predictor(setup: WorkerSetup) -> Any:
    """The worker's predictor for ``setup`` (built once per worker process and parameters)."""
    import torch

    from nnunet_vasculature.inference.model import resolve_device
    from nnunet_vasculature.inference.streaming import StreamingPredictor
    device = _worker_device(setup.device)
    if setup.torch_threads:
        torch.set_num_threads(setup.torch_threads)
    key = json.dumps([setup.options.to_json(), device, setup.torch_threads], sort_keys=True)
    return _cached("predictor", key, lambda: StreamingPredictor(setup.options, resolve_device(device)))


def _tissue(setup: WorkerSetup, kidney: str, src: VolumeSource, predictor: Any) -> Any:
    """The worker's tissue mask of ``kidney`` (measured once per worker process, kidney and parameters)."""
    key = json.dumps([setup.spec.to_json(), setup.options.to_json()], sort_keys=True)
    masks = _cached("tissue", key, dict)
    if kidney not in masks:
        masks[kidney] = predictor.tissue_mask(src)
    return masks[kidney]


def _slab_task(task: SlabTask) -> tuple[str, int, float]:
    """Predict planes [z0, z1) of one kidney into its array (whole chunks) and mark the slab done."""
    import zarr
    started = time.time()
    if task.setup.on_slab is not None:
        task.setup.on_slab(task.kidney, task.slab)
    src = _source(task.setup, task.kidney)
    predictor = _predictor(task.setup)
    group = zarr.open_group(task.out, mode="r+")
    sink = KidneyWriter.slab(group, task.array, task.z0, task.z1, flush_planes=task.flush)
    crop_box, stats = task.scan
    tissue = _tissue(task.setup, task.kidney, src, predictor) if task.setup.options.tissue_mask else None
    predictor.predict(src, sink, task.z0, end=task.z1, scan=(crop_box, stats), tissue=tissue)
    sink.close()
    group[task.progress][task.slab] = 1
    return task.kidney, task.slab, time.time() - started
