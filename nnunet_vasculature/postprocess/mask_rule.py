"""The post-processing decision as one typed record: :class:`MaskRule`, a view over ``postprocessing.json``
in the spirit of nnU-Net's ``PlansManager`` (the file stays the one ``tune`` writes; code reads fields).

One name per field for every competition: ``level`` (foreground where the uint8 probability is at least
it; ``threshold`` is its probability), ``min_component_size`` (smaller 26-connected components are removed:
voxels for SenNet, full-resolution pixels for HuBMAP kidney), ``closing_radius``, ``by_fraction`` with
``vessel_fraction``, and the ``competition`` and tool ``version`` that wrote it. The file keeps its keys
(``threshold``, ``threshold_u8``, ``min_component_voxels`` for SenNet, ``min_component_pixels`` for HuBMAP
kidney, ``threshold_mode``, ``vessel_fraction``, ``closing_radius``, ``competition``,
``nnunet_vasculature_version``): files written by older versions read as before, with either size key.

The file holds the threshold twice (``threshold`` for people, ``threshold_u8`` applied): a file where they
disagree (one edited, not the other) is refused rather than applied at the level nobody meant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from nnunet_vasculature.errors import UserError

SIZE_KEYS = {"sennet": "min_component_voxels", "hubmap-kidney": "min_component_pixels"}
OLD_SIZE_KEYS = ("min_component_voxels", "min_component_pixels")      # either is read, for every competition
MODES = ("probability", "fraction")


@dataclass(frozen=True)
class MaskRule:
    """How uint8 probabilities become a mask (see the module's description)."""
    competition: str
    level: int
    min_component_size: int = 0
    closing_radius: int = 0
    by_fraction: bool = False
    vessel_fraction: float = 0.0
    version: str | None = None

    @property
    def threshold(self) -> float:
        """The probability of :attr:`level` (``level / 255``)."""
        return self.level / 255.0

    def to_json(self) -> dict:
        """The decision as ``postprocessing.json`` holds it (the keys ``tune`` has always written).

        Returns:
            A JSON-serialisable dict; the tool version only when known.
        """
        record: dict[str, Any] = {"competition": self.competition}
        if self.version is not None:
            record["nnunet_vasculature_version"] = self.version
        if self.competition != "hubmap-kidney":
            record["threshold_mode"] = "fraction" if self.by_fraction else "probability"
        record.update({"threshold": self.threshold, "threshold_u8": self.level})
        if self.competition != "hubmap-kidney":
            record.update({"vessel_fraction": self.vessel_fraction, "closing_radius": self.closing_radius})
        record[SIZE_KEYS.get(self.competition, "min_component_voxels")] = self.min_component_size
        return record

    def applied(self) -> dict:
        """What ``apply`` records in an image's provenance (the decision without the threshold's float and the
        record fields: the form recorded before this class existed, so that earlier outputs resume).

        Returns:
            ``threshold_u8``, ``min_component_voxels``, ``threshold_mode``, ``vessel_fraction``, ``closing_radius``.
        """
        return {"threshold_u8": self.level, "min_component_voxels": self.min_component_size,
                "threshold_mode": "fraction" if self.by_fraction else "probability",
                "vessel_fraction": self.vessel_fraction, "closing_radius": self.closing_radius}

    @classmethod
    def from_json(cls, record: Mapping, where: str = "postprocessing.json", competition: str | None = None
                  ) -> MaskRule:
        """Read and check a decision.

        Args:
            record: the parsed ``postprocessing.json`` (or ``tune``'s result; other keys are evidence, ignored).
            where: the file, for messages.
            competition: the competition when the record names none (files written before it did).

        Returns:
            The rule; a one-line UserError naming ``where`` for a missing, malformed or contradictory field.
        """
        competition = str(record.get("competition") or competition or "sennet")
        try:
            level = _integer(record["threshold_u8"], "threshold_u8", where)
            sizes = {k: _integer(record[k], k, where) for k in OLD_SIZE_KEYS if k in record}
            mode = str(record.get("threshold_mode", "probability"))
            fraction = float(record.get("vessel_fraction", 0.0))
            closing = _integer(record.get("closing_radius", 0), "closing_radius", where)
        except KeyError as e:
            raise UserError(f"{where}: not a postprocessing.json from 'tune' (no {e.args[0]})") from None
        except (ValueError, TypeError) as e:
            raise UserError(f"{where}: not a postprocessing.json from 'tune' ({type(e).__name__}: {e})") from None
        if not 0 <= level <= 255:
            raise UserError(f"{where}: threshold_u8 {level} outside 0..255")
        if "threshold" in record:
            _check_threshold(record["threshold"], level, where)
        if len(set(sizes.values())) > 1:
            raise UserError(f"{where}: " + " and ".join(f"{k} {v}" for k, v in sizes.items()) + " disagree; keep one")
        min_size = next(iter(sizes.values()), 0)
        if mode not in MODES:
            raise UserError(f"{where}: threshold_mode {mode!r} is neither 'probability' nor 'fraction'")
        if mode == "fraction" and not 0 < fraction <= 1:
            raise UserError(f"{where}: vessel_fraction {fraction} outside (0, 1]")
        if closing < 0 or min_size < 0:
            raise UserError(f"{where}: negative closing_radius or {SIZE_KEYS.get(competition, 'min_component_voxels')}")
        if competition == "hubmap-kidney" and (closing or mode == "fraction"):
            raise UserError(f"{where}: 'tune hubmap-kidney' has no closing_radius or threshold_mode 'fraction'; "
                            f"remove them")
        version = record.get("nnunet_vasculature_version")
        return cls(competition, level, min_size, closing, mode == "fraction", fraction,
                   None if version is None else str(version))


def _integer(value: object, key: str, where: str) -> int:
    """An integer field (an integral float is read as the integer, as files written by hand may hold one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{where}: {key} {value!r} is not an integer")
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{where}: {key} {value!r} is not an integer")
    return int(number)


def _check_threshold(value: object, level: int, where: str) -> None:
    """Refuse a ``threshold`` that is not the probability of ``threshold_u8`` (the level is what is applied)."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: threshold {value!r} is not a number") from None
    if not 0.0 <= threshold <= 1.0:            # also NaN
        raise UserError(f"{where}: threshold {value!r} is not a probability in [0, 1]")
    if round(threshold * 255) != level:
        raise UserError(f"{where}: threshold {threshold:g} and threshold_u8 {level} (= {level / 255:.4f}) disagree; "
                        f"threshold_u8 is what is applied: set it to {round(threshold * 255)} for {threshold:g}, or "
                        f"remove threshold")


__all__ = ["MaskRule", "SIZE_KEYS"]
