"""The prediction options of ``predict``: one frozen value, built once by the command line (or a caller),
handed to :func:`~nnunet_vasculature.inference.predict.predict`, to
:func:`~nnunet_vasculature.inference.distributed.predict_distributed` and its workers, recorded in the
probability store (``source.model``) and hashed into the distributed run's parameters.

The JSON form is the store's record: ``folder`` (resolved), ``folds``, ``checkpoint``, ``tta`` (nnU-Net's
mirroring), ``step_size``, and the extra test-time options only when they are on (``tta_rotations``,
``tta_permutations``, ``tta_scale``, ``tissue_mask``), so that a run without them reads as one made before they
existed. ``tissue_mask`` (:mod:`nnunet_vasculature.inference.tissue`) skips the tiles wholly outside the dilated
tissue mask: their voxels become background, so it is part of the result (and of a resume check).
Where the networks run (``-device``) is not an option of the result and is not part of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.inference.tta import check_scale

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class PredictionOptions:
    """What a prediction is made with: the model (folder, folds, checkpoint) and how it is applied."""
    model_folder: Path
    folds: tuple[str, ...] = ("0",)
    checkpoint: str = DEFAULT_CHECKPOINT
    tta: bool = True                 # nnU-Net's mirroring test-time augmentation
    step_size: float = 0.5           # sliding-window step, fraction of the patch
    tta_rotations: bool = False
    tta_permutations: bool = False
    tta_scale: float = 1.0
    tissue_mask: bool = False        # skip the tiles of mounting medium (inference/tissue.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_folder", Path(self.model_folder).resolve())
        object.__setattr__(self, "folds", tuple(str(f) for f in self.folds))
        object.__setattr__(self, "step_size", float(self.step_size))
        object.__setattr__(self, "tta_scale", check_scale(self.tta_scale))
        if math.isnan(self.step_size) or not 0 < self.step_size <= 1:
            raise UserError(f"-step_size {self.step_size:g}: give a fraction of the patch in (0, 1]")

    def with_folder(self, folder: Path) -> PredictionOptions:
        """The same options for the model in ``folder``.

        Args:
            folder: another model folder.

        Returns:
            A new value.
        """
        return replace(self, model_folder=Path(folder))

    def to_json(self) -> dict:
        """The store's record of these options (the module's description says which keys).

        Returns:
            A dict of JSON values.
        """
        out = {"folder": str(self.model_folder), "folds": list(self.folds), "checkpoint": self.checkpoint,
               "tta": bool(self.tta), "step_size": self.step_size}
        if self.tta_rotations:
            out["tta_rotations"] = True
        if self.tta_permutations:
            out["tta_permutations"] = True
        if self.tta_scale != 1.0:
            out["tta_scale"] = self.tta_scale
        if self.tissue_mask:
            out["tissue_mask"] = True
        return out

    @classmethod
    def from_json(cls, record: dict) -> PredictionOptions:
        """Options from :meth:`to_json`'s record.

        Args:
            record: a dict as :meth:`to_json` writes it (the defaults of the optional keys when absent).

        Returns:
            The options.
        """
        try:
            return cls(Path(record["folder"]), tuple(record["folds"]), record["checkpoint"], bool(record["tta"]),
                       float(record["step_size"]), bool(record.get("tta_rotations", False)),
                       bool(record.get("tta_permutations", False)), float(record.get("tta_scale", 1.0)),
                       bool(record.get("tissue_mask", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"prediction options record {record!r}: missing or bad value ({e})") from None

    @classmethod
    def of(cls, model_folder: Path, folds: Sequence[int | str] = ("0",), **options: object) -> PredictionOptions:
        """Options for ``model_folder`` and ``folds`` (any fold list), the others by keyword.

        Args:
            model_folder: the model folder.
            folds: folds to average.
            **options: any other field (``checkpoint``, ``tta``, ``step_size``, ``tta_*``, ``tissue_mask``).

        Returns:
            The options.
        """
        return cls(Path(model_folder), tuple(str(f) for f in folds), **options)


__all__ = ["DEFAULT_CHECKPOINT", "PredictionOptions"]
