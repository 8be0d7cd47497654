"""benchmarks/ as a package (issue 32): the runner lists the benchmarks, ``record`` appends a run record with the
machine, versions and commit, ``--table`` renders the latest one, and no benchmark reaches into tests/ or edits
``sys.path``."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def _runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True)


def test_the_runner_lists_every_benchmark_with_a_description_and_groups_the_experiments():
    r = _runner()
    assert r.returncode == 0, r.stderr
    micro, _, experiments = r.stdout.partition("experiments")
    names = {p.stem for p in BENCHMARKS.glob("*.py")} - {"__init__", "__main__", "common"}
    for name in names:
        line = next((x for x in r.stdout.splitlines() if x.split()[:1] == [name]), None)
        assert line and len(line.split()) > 2, f"{name}: not listed with a description"
        assert (name in experiments) == (name in {"quality", "transfer", "shift"}), name
    assert "distributed" not in names, "benchmarks/distributed.py would hide dask's `distributed` package"


def test_an_unknown_benchmark_is_one_line_and_a_non_zero_exit():
    r = _runner("no_such_benchmark")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no_such_benchmark" in r.stderr


def test_record_appends_a_line_with_the_machine_versions_commit_args_and_figures(tmp_path):
    from benchmarks.common import record
    figures = {"rows": [{"what": "a", "seconds": 0.5}], "ratio": 2.0}
    record("demo_bench", figures, {"size": 8, "out": tmp_path}, folder=tmp_path)
    record("demo_bench", {"rows": [{"what": "b", "seconds": 0.25}]}, {"size": 16}, folder=tmp_path)
    lines = (tmp_path / "demo_bench.jsonl").read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[0])
    assert entry["benchmark"] == "demo_bench" and entry["figures"] == figures
    assert entry["args"] == {"size": 8, "out": str(tmp_path)}
    assert set(entry["machine"]) >= {"cpus", "memory_gib", "load_average", "cpu_model"}
    assert entry["machine"]["cpus"] >= 1 and len(entry["machine"]["load_average"]) == 3
    assert set(entry["versions"]) >= {"python", "torch", "nnunetv2", "numpy", "nnunet_vasculature"}
    assert entry["versions"]["python"] == sys.version.split()[0]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert entry["git"]["sha"] == head and isinstance(entry["git"]["dirty"], bool)


def test_table_renders_the_latest_record_as_markdown(tmp_path):
    from benchmarks.__main__ import table
    from benchmarks.common import record
    record("demo_bench", {"rows": [{"what": "old run", "seconds": 9.0}]}, {}, folder=tmp_path)
    record("demo_bench", {"rows": [{"what": "x|y", "seconds": 0.123456}, {"what": "z", "note": "n"}],
                          "ratio": 2.5}, {}, folder=tmp_path)
    text = table("demo_bench", folder=tmp_path)
    assert "old run" not in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in rows[0].strip("|").split(" | ")] == ["what", "seconds", "note"]
    assert rows[2].split(" | ")[1].strip() == "0.1235" and "x\\|y" in rows[2]
    assert "- ratio: 2.5" in text and "python -m benchmarks demo_bench" in text
    assert "old run" in table("demo_bench", last=2, folder=tmp_path)


def test_table_of_a_name_without_records_is_one_line(tmp_path):
    from benchmarks.__main__ import table
    (tmp_path / "quality.jsonl").write_text(json.dumps({"lever": "baseline", "seed": 0}) + "\n")
    with pytest.raises(SystemExit, match="no run record of quality.*--report"):
        table("quality", folder=tmp_path)


# micro-benchmarks that print their figures without a run record yet (a check, or figures kept in RESULTS.md by hand)
NOT_RECORDING = {"neuroglancer_check", "skeleton_halo", "napari_shot"}


def _record_names(path: Path) -> list:
    """The first argument of every ``record(...)`` call in one module (``None`` where it is not a literal)."""
    return [node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "record"]


def test_every_micro_benchmark_records_its_run_under_its_own_name():
    """Each micro-benchmark appends a run record named after its module, so `--table NAME` finds it (issue 32:
    dask_scaling, hoa_dask, hubmap_kidney and real_size printed their tables without one)."""
    names = {p.stem: p for p in BENCHMARKS.glob("*.py")}
    micro = set(names) - {"__init__", "__main__", "common", "quality", "transfer", "shift"} - NOT_RECORDING
    wrong = {name: _record_names(names[name]) for name in sorted(micro)}
    wrong = {name: found for name, found in wrong.items() if not found or set(found) != {name}}
    assert not wrong, f"no record(NAME, ...) call, or another name: {wrong}"


def _code_strings(tree: ast.AST) -> list[ast.AST]:
    """The string literals of a module that parse as Python (child scripts run with ``python -c``); in an f-string
    each placeholder stands as a name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "_" for part in node.values)
        else:
            continue
        if "\n" in text.strip():
            try:
                found.append(ast.parse(text))
            except SyntaxError:
                pass
    return found


ADDS_TO_SYS_PATH = {"insert", "append", "extend"}


def _violations(path: Path) -> list[str]:
    """Imports from tests/ (or of its helper modules), paths into tests/ and edits of sys.path in one module; in
    its child scripts (code in string literals) imports from tests/ and additions to sys.path."""
    tests = REPO / "tests"
    helpers = {p.stem for p in tests.glob("*.py")} | {p.name for p in tests.iterdir() if p.is_dir()}
    module = ast.parse(path.read_text())
    bad = []
    for tree, where in [(module, "")] + [(code, " in a child script") for code in _code_strings(module)]:
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad += [f"imports {n}{where}" for n in names if n.split(".")[0] in helpers | {"tests"}]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.strip("/").split("/")[0] == "tests":
                bad.append(f"names the tests/ folder{where}")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" \
                    and node.attr == "path":
                if not where:
                    bad.append("uses sys.path")
            elif where and isinstance(node, ast.Attribute) and node.attr in ADDS_TO_SYS_PATH \
                    and ast.unparse(node.value) == "sys.path":
                bad.append(f"adds to sys.path{where}")
            elif where and isinstance(node, ast.AugAssign) and ast.unparse(node.target) == "sys.path":
                bad.append(f"adds to sys.path{where}")
    return bad


def test_no_benchmark_imports_from_tests_or_edits_sys_path():
    bad = {p.stem: _violations(p) for p in sorted(BENCHMARKS.glob("*.py"))}
    bad = {name: v for name, v in bad.items() if v}
    assert not bad, bad


def test_the_check_sees_a_test_helper_import_and_a_sys_path_edit(tmp_path):
    """The four scripts of issue 32 did both (`sys.path.insert(0, .../tests)`, then an import of a test helper)."""
    script = tmp_path / "old.py"
    script.write_text("import sys\nsys.path.insert(0, 'tests')\nfrom helpers.model import make_model_folder\n")
    assert sorted(_violations(script)) == ["imports helpers.model", "names the tests/ folder", "uses sys.path"]
    script.write_text("from benchmarks.common import table\nfrom nnunet_vasculature.demo.tiny_model import "
                      "make_model_folder\n")
    assert _violations(script) == []


def test_the_check_sees_a_test_helper_reached_from_a_child_script(tmp_path):
    """real_size.py's child script (a string run with `python -c`) put tests/ on sys.path and imported a test helper
    (issue 32 audit): invisible to a check of the module's own imports. Dropping entries (tune_speed's child, so
    that the package comes from PYTHONPATH) adds nothing and passes."""
    script = tmp_path / "child.py"
    script.write_text('from pathlib import Path\nROOT = Path(__file__).parent\nZIP = """\nimport sys\n'
                      'sys.path.insert(0, sys.argv[1])\nfrom helpers.v1_download import write_task008_zip\n"""\n'
                      'ARGS = [str(ROOT / "tests")]\nTRAINER = f"""\nimport sys\nsys.path += [{str(ROOT)!r}]\n'
                      'class {ROOT.name}:\n    pass\n"""\n')
    assert sorted(_violations(script)) == ["adds to sys.path in a child script", "adds to sys.path in a child script",
                                           "imports helpers.v1_download in a child script", "names the tests/ folder"]
    script.write_text('CHILD = """\nimport os, sys\nsys.path = [p for p in sys.path if p != os.getcwd()]\n'
                      'from benchmarks.common import write_task008_zip\n"""\n')
    assert _violations(script) == []
