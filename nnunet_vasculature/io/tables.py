"""The Kaggle CSV tables of the three competitions: read with their columns checked, one row per id.

Every reader of a Kaggle table (``solution.csv``, ``sample_submission.csv``, a submission, ``train.csv``) goes
through :func:`read_table`, so a second row for an id is refused the same way everywhere (naming the file
and both lines) instead of silently replacing the first, and a table of another competition is named as such.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.rle import allow_long_csv_fields

# columns that only one competition's tables have (DOMAIN.md): how a table of the wrong competition is recognised
COMPETITION_COLUMNS = (("hubmap-vasculature", ("prediction_string", "annotations")),
                       ("hubmap-kidney", ("predicted", "encoding")),
                       ("sennet", ("rle",)))


def table_competition(columns: Sequence[str]) -> str | None:
    """The competition whose tables have these columns, or None when no column tells.

    Args:
        columns: the header of a CSV file.

    Returns:
        ``"sennet"``, ``"hubmap-kidney"``, ``"hubmap-vasculature"`` or None.
    """
    have = set(columns)
    return next((name for name, marks in COMPETITION_COLUMNS if have & set(marks)), None)


def read_table(path: Path | str, required: Sequence[str], unique: str | None = "id",
               competition: str | None = None) -> list[dict[str, str]]:
    """Rows of a Kaggle CSV table, refusing missing columns and (when ``unique``) a second row for an id or an
    id with whitespace around it (it would match no slide or kidney).

    Args:
        path: the CSV file (fields of any length: whole-slide RLEs run to megabytes).
        required: the columns it must have.
        unique: the column whose values must not repeat (None: repeats allowed).
        competition: the competition the caller reads for; a table missing columns that looks like another
            competition's says so.

    Returns:
        The rows as dicts, in file order.

    Raises:
        UserError: the file cannot be read, lacks a column, repeats an id or has one with whitespace around it
            (naming the file and lines).
    """
    path = Path(path)
    allow_long_csv_fields()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in required if c not in columns]
            if missing:
                other = table_competition(columns)
                hint = (f"; these are the columns of a {other} table: choose that competition "
                        f"(COMMAND {other} ...)" if other and other != competition else "")
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(columns) or 'none'})"
                                + hint)
            rows = list(reader)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if unique is not None:
        first_line: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            key = row[unique]
            if key is not None and key != key.strip():
                raise UserError(f"{path}:{line}: {unique} {key!r} has whitespace around it (ids match exactly: "
                                f"remove the spaces)")
            if key in first_line:
                raise UserError(f"{path}:{line}: a second row for {unique} {key} (first on line {first_line[key]})")
            first_line[key] = line
    return rows


__all__ = ["COMPETITION_COLUMNS", "table_competition", "read_table"]
