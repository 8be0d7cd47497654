"""What ``predict`` reads and writes, decided before the model is loaded: the model's plans (read without
its weights), the input volumes (the ``-i`` value parsed once, :class:`~nnunet_vasculature.io.input_spec.InputSpec`,
and opened with a pyramid level chosen against the model's spacing) and the kind of output. The functions
here take the InputSpec (the ``-i`` text is still accepted and parsed by
:func:`~nnunet_vasculature.io.input_spec.parse_input`).

Outputs: a path ending in ``.ome.zarr`` is an NGFF multiscale image of one volume
(:class:`~nnunet_vasculature.io.ngff.NgffWriter`); any other path is the probability store of
:mod:`nnunet_vasculature.io.store` (one array per kidney). Without ``-o`` a multiscale input (``hoa:NAME``,
OME-Zarr, N5, JPEG 2000 slices) is written to ``<its name>.ome.zarr`` in the current folder; other inputs
need ``-o``. An ``.ome.zarr`` output of an input holding several kidneys is refused (an NGFF image holds
one volume, and viewers open it as one): predict them one at a time or into a ``.zarr`` store.

Every volume opened for prediction gets one line (:func:`spacing_line`): the voxel size used, where it came
from (a known Kaggle name, ``--spacing``, the input's metadata, ...) and the resampling factor to the model's
voxel size; an assumed voxel size is a warning naming ``--spacing``. ``predict``, its Dask path and
``--dry_run`` print the same line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.io.input_spec import InputSpec, open_input, parse_input
from nnunet_vasculature.io.intensity import map_sources, model_mapping
from nnunet_vasculature.io.volume_source import ASSUMED, VolumeSource

NGFF_SUFFIX = ".ome.zarr"
NGFF_CHUNK_DEPTH = 64       # z-chunks of the NGFF output (the distributed slabs are multiples of it)


@dataclass(frozen=True)
class ModelPlans:
    """A model's plans without its weights: nnU-Net's plans and configuration managers, the configuration's
    name, and its voxel size in input axes (z, y, x; the dataset's units, µm for HiP-CT)."""
    plans_manager: Any
    configuration_manager: Any
    configuration: str
    spacing: tuple[float, float, float]
    patch: tuple[int, ...]


def read_model_plans(folder: Path) -> ModelPlans:
    """The plans of the model in ``folder`` (``plans.json`` only; no checkpoint is read).

    The configuration is the one the folder is named after (``Trainer__Plans__Configuration``, as nnU-Net
    names it), else the plans' only configuration, else ``3d_fullres``.

    Args:
        folder: the model folder.

    Returns:
        The plans.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    folder = Path(folder)
    try:
        plans = json.loads((folder / "plans.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{folder}: plans.json is not readable JSON ({e})") from None
    configurations = plans.get("configurations") or {}
    named = folder.name.split("__")[-1] if folder.name.count("__") == 2 else None
    if named in configurations:
        configuration = named
    elif len(configurations) == 1:
        configuration = next(iter(configurations))
    elif "3d_fullres" in configurations:
        configuration = "3d_fullres"
    else:
        raise UserError(f"{folder}: cannot tell the configuration (folder name not Trainer__Plans__Configuration; "
                        f"plans list {', '.join(configurations) or 'none'})")
    manager = PlansManager(plans)
    cm = manager.get_configuration(configuration)
    backward = [int(t) for t in manager.transpose_backward]
    spacing = tuple(float(cm.spacing[t]) for t in backward)
    return ModelPlans(manager, cm, configuration, spacing, tuple(int(p) for p in cm.patch_size))


def spacing_line(src: VolumeSource, model_spacing: tuple[float, ...]) -> str:
    """The line saying the voxel size a volume is predicted at, where it came from and the resampling to the model.

    Args:
        src: the input volume (its ``spacing`` and ``spacing_source``).
        model_spacing: the voxel size (z, y, x) the network sees (the model's, divided by ``--tta_scale``).

    Returns:
        e.g. ``kidney_6: voxel size 63.08 µm (known name), model 50 µm: resampled x1.262``; an assumed voxel size
        starts with ``warning:`` and names ``--spacing``.
    """
    factors = [float(s) / float(m) for s, m in zip(src.spacing, model_spacing)]
    resampling = "not resampled" if all(abs(f - 1) < 1e-6 for f in factors) else f"resampled x{_fmt(factors, 4)}"
    line = (f"{src.name}: voxel size {_fmt(src.spacing)} µm ({src.spacing_source or 'given by the caller'}), "
            f"model {_fmt(model_spacing)} µm: {resampling}")
    if src.spacing_source == ASSUMED:
        return (f"warning: {line}; nothing in the input says its voxel size: pass --spacing UM "
                f"(or --spacing {src.name}=UM)")
    return line


def _fmt(values: tuple[float, ...] | list[float], digits: int = 6) -> str:
    text = [f"{v:.{digits}g}" for v in values]
    return text[0] if len(set(text)) == 1 else " x ".join(text)


def model_input_spacing(options: PredictionOptions) -> tuple[float, float, float]:
    """The voxel size (z, y, x) the network is fed: the model's, divided by ``--tta_scale``.

    Args:
        options: the prediction options.

    Returns:
        µm per voxel.
    """
    return tuple(s / options.tta_scale for s in read_model_plans(options.model_folder).spacing)


def open_prediction_inputs(spec: InputSpec | str | Path, options: PredictionOptions, spacing: float | None = None,
                           level: int | str = "auto", remote: bool = False,
                           log: Callable[[str], None] | None = print) -> list[VolumeSource]:
    """The volumes to predict, as the model sees them (intensity-mapped when its training images were).

    Args:
        spec: the parsed ``-i`` value (or its text, parsed here with ``spacing``, ``level`` and ``remote``).
        options: the prediction options (the model's plans give ``level="auto"`` its target spacing).
        spacing: ``--spacing`` (µm when the input does not say, or its words with ``KIDNEY=UM`` pairs; only
            with the ``-i`` text).
        level: the pyramid level of a multiscale input: ``"auto"`` or a number (only with the ``-i`` text).
        remote: allow an ``hoa:`` dataset to be read over the network (only with the ``-i`` text).
        log: where the chosen level, each volume's voxel size (:func:`spacing_line`) and the intensity mapping
            are reported (None: nowhere).

    Returns:
        The volumes.
    """
    spec = parse_input(spec, level, remote, spacing)
    target = read_model_plans(options.model_folder).spacing if spec.multiscale else None
    sources = open_input(spec, target, log)
    if log is not None:
        model = model_input_spacing(options)
        for src in sources:
            log(spacing_line(src, model))
    return map_sources(sources, model_mapping(options.model_folder), log=log or (lambda m: None))


def output_path(spec: InputSpec | str | Path, out: Path | None, sources: list[VolumeSource]) -> Path:
    """Where the prediction goes: ``out``, or ``<name>.ome.zarr`` for a multiscale input without ``-o``;
    an ``.ome.zarr`` output of several volumes is refused.

    Args:
        spec: the parsed ``-i`` value (or its text).
        out: the ``-o`` value, or None.
        sources: the opened volumes.

    Returns:
        The output path.
    """
    spec = parse_input(spec)
    if out is None:
        if not spec.multiscale:
            raise UserError(f"{spec}: give -o (probs.zarr, or NAME.ome.zarr for an NGFF image)")
        out = Path(f"{sources[0].name}{NGFF_SUFFIX}")
    out = Path(out)
    if spec.path is not None and out.resolve() == spec.path.resolve():
        raise UserError(f"{out}: the output would replace the input {spec}; give -o another path")
    if is_ngff_output(out):
        if len(sources) != 1:
            names = ", ".join(s.name for s in sources)
            raise UserError(f"{out}: an OME-Zarr image holds one volume, {spec} has {len(sources)} ({names}); "
                            f"predict them one at a time (one .ome.zarr each) or into a .zarr store")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / ".zgroup").is_file())):
            raise UserError(f"{out}: exists and is not an OME-Zarr image of predict (zarr format 2)")
    elif out.exists() and not (out / "zarr.json").is_file():
        raise UserError(f"{out}: exists and is not a zarr store")
    return out


def is_ngff_output(out: Path | str) -> bool:
    """Whether ``out`` is written as an NGFF image (its name ends in ``.ome.zarr``).

    Args:
        out: the output path.

    Returns:
        True or False.
    """
    return str(out).rstrip("/").endswith(NGFF_SUFFIX)


def ngff_metadata(src: VolumeSource, spec: InputSpec | str | Path, options: PredictionOptions) -> dict:
    """The NGFF writer's keywords for ``src``: translation overlaying its source level and provenance.

    Args:
        src: the input volume.
        spec: the ``-i`` value (parsed or its text: only its text is recorded).
        options: the prediction options.

    Returns:
        ``{"translation": ..., "provenance": ...}``.
    """
    provenance = dict(src.provenance or {"source": str(spec)})
    provenance.setdefault("source", str(spec))
    provenance["model"] = {"folder": str(options.model_folder), "folds": list(options.folds),
                           "checkpoint": options.checkpoint}
    if src.choice:
        provenance["level_choice"] = src.choice
    return {"translation": tuple(src.translation), "provenance": provenance}


__all__ = ["NGFF_SUFFIX", "NGFF_CHUNK_DEPTH", "ModelPlans", "read_model_plans", "spacing_line", "model_input_spacing",
           "open_prediction_inputs", "output_path", "is_ngff_output", "ngff_metadata"]
