"""Small helpers shared by the synthetic generators."""
from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, header: tuple, rows: list) -> None:
    """A CSV file with a header row."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
