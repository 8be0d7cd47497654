"""The benchmark runner (nnU-Net's benchmark trainer + summary script as the model).

    python -m benchmarks                           # the benchmarks, one line each
    python -m benchmarks NAME [args]               # run benchmarks/NAME.py (NAME --help: its arguments)
    python -m benchmarks --table NAME [--last N]   # markdown of the latest N run records of NAME

Run from the repository root. The listing reads each module's docstring without importing it.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path

from benchmarks.common import RUNS, load_records, render

HERE = Path(__file__).resolve().parent
# experiments train models and keep their own per-run records (--work/runs.jsonl, `NAME --report`);
# everything else is a micro-benchmark that measures its reference in the same run
EXPERIMENTS = {"quality", "transfer", "shift"}
NOT_BENCHMARKS = {"__init__", "__main__", "common"}


def _summary(path: Path) -> tuple[str, bool]:
    """A module's docstring's first sentence (at most 100 characters), and whether it calls ``record``."""
    tree = ast.parse(path.read_text())
    paragraph = " ".join((ast.get_docstring(tree) or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    doc = sentence if len(sentence) <= 100 else sentence[:99] + "…"
    records = any(isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "record"
                  for node in ast.walk(tree))
    return doc, records


def benchmarks() -> dict[str, Path]:
    """name -> file of every benchmark module in this folder."""
    return {p.stem: p for p in sorted(HERE.glob("*.py")) if p.stem not in NOT_BENCHMARKS}


def listing() -> str:
    """The runner's listing: micro-benchmarks, then experiments, one line each (``*``: appends a run record)."""
    lines = ["usage: python -m benchmarks NAME [args] | --table NAME [--last N]"]
    names = benchmarks()
    for title, group in (("micro-benchmarks", [n for n in names if n not in EXPERIMENTS]),
                         ("experiments (train models; own runs file and --report)",
                          [n for n in names if n in EXPERIMENTS])):
        lines += ["", f"{title}:"]
        width = max(map(len, names))
        for name in group:
            doc, records = _summary(names[name])
            lines.append(f"  {name:<{width}} {'*' if records else ' '} {doc}")
    lines += ["", f"*: appends a run record to {RUNS.relative_to(HERE.parent)}/NAME.jsonl (--table NAME renders it)",
              "shell scripts: bash benchmarks/gpu_run.sh (GPU check), bash benchmarks/readme_recipe.sh"]
    return "\n".join(lines)


def table(name: str, last: int = 1, folder: Path = RUNS) -> str:
    """Markdown of the latest ``last`` run records of ``name``, oldest first.

    Args:
        name: the benchmark's name.
        last: how many records.
        folder: where the records are.

    Returns:
        The markdown text.

    Raises:
        SystemExit: no record of ``name`` (a one-line message).
    """
    records = load_records(name, folder)
    if not records:
        hint = f" ({name} keeps its own runs: python -m benchmarks {name} --report)" if name in EXPERIMENTS else ""
        raise SystemExit(f"{Path(folder) / name}.jsonl: no run record of {name}{hint}")
    return "\n\n".join(render(entry) for entry in records[-last:])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(listing())
        return
    if argv[0] == "--table":
        parser = argparse.ArgumentParser(prog="python -m benchmarks --table")
        parser.add_argument("name")
        parser.add_argument("--last", type=int, default=1, help="how many of the latest records (default 1)")
        a = parser.parse_args(argv[1:])
        print(table(a.name, a.last))
        return
    name, names = argv[0], benchmarks()
    if name not in names:
        raise SystemExit(f"benchmarks: no benchmark named {name!r} (python -m benchmarks lists them)")
    module = importlib.import_module(f"benchmarks.{name}")
    sys.argv = [f"python -m benchmarks {name}", *argv[1:]]
    module.main()


if __name__ == "__main__":
    main()
