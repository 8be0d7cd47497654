"""The one protocol of the cumulative metrics (MONAI's ``Cumulative`` in spirit): each metric is a plain function
on arrays (``surface_dice``, ``average_precision``, ``kidney_scores``...) plus an accumulator that is fed the
data piece by piece, in order (z-blocks of a volume, tiles of a slide), and answers the metric of all it was fed."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Accumulator(Protocol):
    """Fed with ``add(...)`` (the next piece of prediction and truth), answers ``score()``.

    ``score()`` takes no required argument (an optional value for an undefined score is allowed) and may be asked
    more than once; what ``add`` takes is the metric's own (``SurfaceDiceAccumulator``: prediction and truth
    z-blocks; ``APAccumulator``: a tile's truths, detections and scores).
    """

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Add the next piece of the data."""

    def score(self) -> float:
        """The metric of everything added so far."""


__all__ = ["Accumulator", "METRICS", "OBJECTIVES"]


# the SenNet hosts' metric names (metrics/hosts.py computes them): here, in a module without numpy or scipy, so that
# a command's parser can offer them without importing the metrics themselves
METRICS = ("nsd0", "nsd1", "cldice", "assd", "dice")
OBJECTIVES = ("nsd0", "nsd1", "cldice", "dice")     # what `tune --objective` can maximise
