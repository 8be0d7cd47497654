"""Checks every post-processing command makes before any work: an output never replaces an input or another
output of the same command, and a file of another competition is named as such (which competition it looks
like) instead of failing later on a missing column or slice folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.tables import table_competition


def check_outputs(inputs: Iterable[tuple[str, Path | str | None]], outputs: Iterable[tuple[str, Path | str | None]]
                  ) -> None:
    """Refuse an output that resolves to an input, lies inside one, or equals another output.

    Args:
        inputs: (flag, path) of what the command reads (None entries are skipped).
        outputs: (flag, path) of what it writes.

    Raises:
        UserError: naming both flags and the path.
    """
    def resolved(pairs: Iterable[tuple[str, Path | str | None]]) -> list[tuple[str, Path]]:
        return [(flag, Path(p).expanduser().resolve()) for flag, p in pairs if p is not None]
    ins, outs = resolved(inputs), resolved(outputs)
    for n, (flag, out) in enumerate(outs):
        for other_flag, other in outs[:n]:
            if out == other:
                raise UserError(f"{out}: given as {other_flag} and as {flag}; give each output its own path")
        for in_flag, path in ins:
            if out == path or path in out.parents or out in path.parents:
                raise UserError(f"{out}: the output {flag} would replace the input {in_flag} {path}; "
                                f"write it elsewhere")


def looks_like(path: Path | str) -> tuple[str, str] | None:
    """Which competition's file ``path`` looks like, and what it looks like; None when nothing tells.

    Reads only headers and metadata: a CSV's columns, a JSON's keys, a folder's entries, a zarr array's rank.

    Args:
        path: a file or folder a command was given.

    Returns:
        (competition, description) or None.
    """
    from nnunet_vasculature.postprocess.tune import postprocessing_competition
    path = Path(path)
    if path.suffix == ".csv" and path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                header = f.readline().strip().split(",")
        except (OSError, UnicodeDecodeError):
            return None
        kind = table_competition(header)
        return (kind, f"a CSV with columns {','.join(header)}") if kind else None
    if path.suffix == ".jsonl" and path.is_file():
        return "hubmap-vasculature", "a polygons.jsonl"
    if path.suffix == ".json" and path.is_file():
        try:
            kind = postprocessing_competition(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            return None
        return (kind, "a postprocessing.json") if kind else None
    if path.suffix == ".zarr":
        rank = _zarr_rank(path)
        if rank == 2:
            return "hubmap-kidney", "a probability store of predict hubmap-kidney (one 2D slide)"
        return ("sennet", "a predict probability store") if rank in (3, None) and path.exists() else None
    if path.is_dir():
        if (path / "labels").is_dir() or (path / "images").is_dir() or any(path.glob("[0-9][0-9][0-9][0-9].tif")):
            return "sennet", "a kidney folder of slice TIFFs"
        zarrs = sorted(path.glob("*.zarr"))
        if zarrs and _zarr_rank(zarrs[0]) == 2:
            return "hubmap-kidney", "a folder of predict hubmap-kidney stores"
        npz = sorted(path.glob("*.npz"))
        if npz and _npz_is_2d(npz[0]):
            return "hubmap-vasculature", "a folder of 2D nnU-Net probabilities (.npz)"
    return None


def refuse_other_competition(paths: Iterable[Path | str | None], competition: str, command: str) -> None:
    """Refuse the first of ``paths`` that looks like another competition's file, naming that competition.

    Args:
        paths: what the command was given (None entries are skipped).
        competition: the competition the command runs for.
        command: the command (for the suggestion ``COMMAND OTHER ...``).

    Raises:
        UserError: one line naming the file, what it looks like and the command to use instead.
    """
    for p in paths:
        if p is None:
            continue
        seen = looks_like(p)
        if seen is not None and seen[0] != competition:
            raise UserError(f"{p}: looks like {seen[1]} of {seen[0]}, not of {competition}; "
                            f"run '{command} {seen[0]} ...'")


def _zarr_rank(path: Path) -> int | None:
    """The rank of a zarr array at ``path``; None for a group or anything unreadable."""
    import zarr
    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - zarr raises many types for what is not a store
        return None
    return node.ndim if isinstance(node, zarr.Array) else None


def _npz_is_2d(path: Path) -> bool:
    """An nnU-Net probabilities .npz of a 2D case (classes, 1, H, W)."""
    try:
        with np.load(path) as z:
            return "probabilities" in z and z["probabilities"].ndim == 4 and z["probabilities"].shape[1] == 1
    except (OSError, ValueError, EOFError):
        return False


def check_sample_ids(sub_csv: Path | str, ids: Iterable[str], expected: Iterable[str]) -> None:
    """A submission's ids are exactly the sample submission's.

    Args:
        sub_csv: the submission (for the message).
        ids: its ids.
        expected: the sample submission's ids.

    Raises:
        UserError: an id of the sample is missing, or an id is not in the sample.
    """
    seen, expected = set(ids), list(expected)
    missing = [i for i in expected if i not in seen]
    if missing:
        raise UserError(f"{sub_csv}: id {missing[0]} of the sample submission is missing ({len(missing)} missing)")
    known = set(expected)
    unknown = sorted(i for i in seen if i not in known)
    if unknown:
        raise UserError(f"{sub_csv}: id {unknown[0]} is not in the sample submission ({len(unknown)} unknown)")


def sample_order(predicted: Iterable[str], sample_ids: list[str] | None, sample: Path | str | None) -> list[str]:
    """The submission's row order: the sample submission's, whose ids must be exactly the predicted ones.

    Args:
        predicted: the ids that have a prediction.
        sample_ids: the sample submission's ids in order (None: no sample given, the predicted order).
        sample: the sample file (for the message).

    Returns:
        The ids in row order.

    Raises:
        UserError: a sample id without prediction, or a prediction for an id the sample does not list.
    """
    predicted = list(predicted)
    if sample_ids is None:
        return predicted
    have, wanted = set(predicted), set(sample_ids)
    missing = [i for i in sample_ids if i not in have]
    if missing:
        raise UserError(f"{sample}: id {missing[0]} has no prediction ({len(missing)} ids missing)")
    extra = [i for i in predicted if i not in wanted]
    if extra:
        raise UserError(f"{sample}: predicted id {extra[0]} is not in the sample submission ({len(extra)} such ids)")
    return list(sample_ids)
