"""HuBMAP vasculature annotations: ``polygons.jsonl``, one JSON record per annotated tile."""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_vasculature.errors import UserError


def read_polygons(path: Path) -> dict[str, list[dict]]:
    """``polygons.jsonl`` -> {tile id: annotations}.

    Args:
        path: the Kaggle ``polygons.jsonl``.

    Returns:
        The annotations of each tile, in file order.

    Raises:
        UserError: a missing file, a line that is not a record with ``id`` and ``annotations`` (naming the
            line), or a second record for a tile (the format has one line per tile; keeping either would
            silently drop the other's annotations).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing (the Kaggle polygons.jsonl)")
    out: dict[str, list[dict]] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise TypeError("not an object")
                tile, annotations = str(rec["id"]), list(rec["annotations"])
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}:{n}: not a JSON object with 'id' and 'annotations'") from None
            if tile in out:
                raise UserError(f"{path}:{n}: a second record for tile {tile} (first on line {first_line[tile]})")
            out[tile], first_line[tile] = annotations, n
    return out
