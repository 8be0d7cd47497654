"""The run record of a prediction output: what made it, so that an interrupted run is resumed and a finished
one is kept only when the same command runs again on the same input.

Every writer of ``predict``'s outputs records it (the probability store's kidney arrays in their attributes,
an ``.ome.zarr`` image in its ``nnunet_vasculature`` attribute) and every writer checks it with the one rule
of :func:`check_resumable` before it writes: :class:`~nnunet_vasculature.io.store.KidneyWriter`,
:class:`~nnunet_vasculature.io.ngff.NgffWriter` (and its labels writer), and the distributed run's client
for both outputs. ``predict`` checks every kidney with it before the model is loaded.

JSON form (the attributes): ``source`` (``{"tool": "predict", "model": PredictionOptions.to_json()}``, or
another tool's record), ``shape`` (z, y, x), ``spacing`` (z, y, x), ``input`` (the input's fingerprint,
:func:`nnunet_vasculature.io.volume_source.fingerprint`; absent when not known), and for a distributed run
``slab_planes`` (planes per task) with ``params_hash`` (a short hash of the model options, spacing, shape and
slab size, for a reader's eye; the comparison uses the fields).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nnunet_vasculature.errors import UserError

NEW, RESUME, COMPLETE = "new", "resume", "complete"      # what check_resumable finds


@dataclass(frozen=True)
class RunRecord:
    """What an output was (or is to be) made with."""
    source: dict
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    input: dict | None = None            # the input's fingerprint; None: not known (not compared)
    slab_planes: int | None = None       # a distributed run's planes per task; None: a single-process run

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if self.slab_planes is not None:
            object.__setattr__(self, "slab_planes", int(self.slab_planes))

    def params_hash(self) -> str:
        """A short hash of the model options, spacing, shape and slab size (the distributed run's attribute).

        Returns:
            16 hex digits.
        """
        params = {**(self.source.get("model") or {}), "spacing": list(self.spacing), "shape": list(self.shape),
                  "slab_planes": self.slab_planes}
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        """The record as attributes (the module's description says which keys).

        Returns:
            A dict of JSON values.
        """
        out: dict[str, Any] = {"source": self.source, "shape": list(self.shape), "spacing": list(self.spacing)}
        if self.input is not None:
            out["input"] = self.input
        if self.slab_planes is not None:
            out.update(slab_planes=self.slab_planes, params_hash=self.params_hash())
        return out

    @classmethod
    def from_json(cls, record: dict) -> RunRecord:
        """A record from :meth:`to_json`'s attributes (other keys are ignored).

        ``.ome.zarr`` outputs of earlier versions kept ``input`` and ``slab_planes`` inside ``source``: they
        are read from there too.

        Args:
            record: the attributes.

        Returns:
            The record.
        """
        source = dict(record.get("source") or {})
        nested = {k: source.pop(k) for k in ("input", "slab_planes", "params_hash") if k in source}
        try:
            return cls(source, tuple(record["shape"]), tuple(record.get("spacing") or ()),
                       record.get("input", nested.get("input")),
                       record.get("slab_planes", nested.get("slab_planes")))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"run record {record!r}: missing or bad value ({e})") from None


@dataclass(frozen=True)
class ExistingRun:
    """The record found in an output, whether it is complete, and the planes written from plane 0 on."""
    record: RunRecord
    complete: bool
    planes_done: int = 0


def differences(old: RunRecord, new: RunRecord) -> list[str]:
    """The settings in which ``old`` differs from ``new`` (the input apart; the slab size only when both have one).

    Args:
        old: the recorded run.
        new: the run asked for.

    Returns:
        Names of the differing settings (model options by their key), empty when none.
    """
    out = []
    old_model, new_model = old.source.get("model"), new.source.get("model")
    if isinstance(old_model, dict) and isinstance(new_model, dict) and old.source.get("tool") == new.source.get("tool"):
        out += [k for k in sorted(set(old_model) | set(new_model)) if old_model.get(k) != new_model.get(k)]
        if {k: v for k, v in old.source.items() if k != "model"} != {k: v for k, v in new.source.items()
                                                                      if k != "model"}:
            out.append("source")
    elif old.source != new.source:
        out.append("source")
    out += [name for name in ("shape", "spacing") if getattr(old, name) != getattr(new, name)]
    if old.slab_planes is not None and new.slab_planes is not None and old.slab_planes != new.slab_planes:
        out.append("slab_planes")
    return out


def check_resumable(existing: ExistingRun | None, wanted: RunRecord, where: str, name: str,
                    overwrite: bool = False) -> str:
    """The one rule for writing ``name`` into an output that may already hold it.

    Nothing there, or ``overwrite``: :data:`NEW`. A run with the same settings on the same input: :data:`COMPLETE`
    when it is finished (keep it), :data:`RESUME` when interrupted. Anything else is a one-line UserError:
    other settings, another input, or (for a distributed run, which resumes by its slab marks) an interrupted
    single-process run.

    Args:
        existing: what the output holds for ``name`` (None: nothing).
        wanted: the run asked for.
        where: the output's path (for messages).
        name: the kidney's (volume's) name.
        overwrite: ``--overwrite``: replace whatever is there.

    Returns:
        :data:`NEW`, :data:`RESUME` or :data:`COMPLETE`.
    """
    if existing is None or overwrite:
        return NEW
    what = "a complete prediction" if existing.complete else "an interrupted run"
    changed = differences(existing.record, wanted)
    if changed:
        raise UserError(f"{where}: '{name}' holds {what} made with other settings ({', '.join(changed)} differ; "
                        f"pass --overwrite to replace it)")
    if wanted.input is not None and existing.record.input != wanted.input:
        old = isinstance(existing.record.input, dict) and "method" not in existing.record.input
        raise UserError(f"{where}: '{name}' holds {what} of another input (its files, sizes or content differ"
                        + ("; it was recorded by an earlier version, which compared modification times" if old else "")
                        + "; pass --overwrite to start again)")
    if existing.complete:
        return COMPLETE
    if wanted.slab_planes is not None and existing.record.slab_planes is None:
        raise UserError(f"{where}: '{name}' holds an interrupted run made without --workers/--scheduler (finish it "
                        f"the same way, or pass --overwrite)")
    return RESUME


__all__ = ["NEW", "RESUME", "COMPLETE", "RunRecord", "ExistingRun", "differences", "check_resumable"]
