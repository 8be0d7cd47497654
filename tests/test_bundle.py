"""bundle: `pip install --no-index --find-links DIR nnunet-vasculature` succeeds on a Python that has only torch
and torchvision (and their own dependencies), with pip isolated from this machine's pip configuration.

No network: the bundle is built from a local wheel folder (``$NNUNET_VASCULATURE_WHEELHOUSE``, default
``.venv/wheelhouse``, which ``make venv`` fills with ``nnunet-vasculature bundle`` while it has the network).
The torch-only Python is a fresh venv whose site sees this environment's torch, torchvision and their
dependencies through symbolic links in a folder on a ``.pth`` (no copy of the GBs of torch).
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from nnunet_vasculature.errors import run_cli
from nnunet_vasculature.export import bundle

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(os.environ.get("NNUNET_VASCULATURE_WHEELHOUSE", REPO / ".venv" / "wheelhouse"))
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def local_platform() -> str:
    libc, version = platform.libc_ver()
    major, minor = version.split(".")[:2]
    return f"manylinux_{major}_{minor}_{platform.machine()}"


def isolated_env(**extra) -> dict:
    """No PIP_* variable and no pip configuration file: this machine's wheel folder and indexes are invisible."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def bundle_cli(argv):
    parser = argparse.ArgumentParser(prog="nnunet-vasculature")
    bundle.add_parser(parser.add_subparsers(dest="command", required=True))
    return run_cli(parser, ["bundle", *argv])


def _closure(names):
    """Distributions ``names`` need here, names included: markers evaluated for this interpreter and for the
    extras each distribution is required with (torch needs ``cuda-toolkit[cudart, ...]``)."""
    seen, todo = {}, [(n, frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        name = bundle.normalize(name)
        done = seen.get(name, (None, None))[1]
        if done is not None and extras <= done:
            continue
        dist = distribution(name)
        extras = extras | (done or frozenset())
        seen[name] = (dist, extras)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, frozenset(req.extras)))
    return {name: dist for name, (dist, _) in seen.items()}


def torch_only_python(root: Path) -> Path:
    """A fresh venv seeing only torch, torchvision and their dependencies (linked from this environment)."""
    venv, site = root / "venv", root / "torch-site"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=isolated_env(), cwd=root)
    site.mkdir()
    for dist in _closure(["torch", "torchvision"]).values():
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    python = venv / "bin" / "python"
    # the venv's own seed setuptools would shadow the one torch needs (torch 2.14 asks setuptools>=77)
    subprocess.run([str(python), "-m", "pip", "--isolated", "uninstall", "-q", "-y", "setuptools"],
                   check=True, env=isolated_env(), cwd=root)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, cwd=root).stdout.strip()
    (Path(purelib) / "torch_only.pth").write_text(str(site) + "\n")
    return python


def installed_torch_only_python(base: Path) -> tuple[Path, subprocess.CompletedProcess | None]:
    """A torch-only Python with nnunet-vasculature installed from the bundle by pip (made once per run).

    Returns:
        (python, pip's process; None when made by an earlier test of this run).
    """
    root = base / "torch-only-installed"
    python = root / "venv" / "bin" / "python"
    if (root / "installed").is_file():
        return python, None
    shutil.rmtree(root, ignore_errors=True)        # an earlier failed attempt of this run
    python = torch_only_python(root)
    r = subprocess.run([str(python), "-m", "pip", "--isolated", "install", "--no-index", "--find-links",
                        str(shared_bundle(base)), "nnunet-vasculature"], env=isolated_env(), capture_output=True,
                       text=True, cwd=root)
    if r.returncode == 0:
        (root / "installed").write_text(r.stdout)
    return python, r


def shared_bundle(base: Path) -> Path:
    """The bundle of this source for this Python and platform from the local wheel folder (built once per run)."""
    out = base / "bundle"
    if not (out / "bundle.json").is_file():
        assert bundle_cli(["-o", str(out), "--python-version", PYTHON, "--platform", local_platform(),
                           "--find-links", str(WHEELHOUSE)]) == 0
    return out


needs_wheelhouse = pytest.mark.skipif(not WHEELHOUSE.is_dir(), reason=f"no local wheel folder {WHEELHOUSE} "
                                      "(make venv fills it; or set NNUNET_VASCULATURE_WHEELHOUSE)")


@pytest.mark.slow
@needs_wheelhouse
def test_bundle_installs_where_only_torch_is(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    out = shared_bundle(base)
    names = sorted(p.name for p in out.glob("*.whl"))
    assert any(n.startswith("nnunet_vasculature-") for n in names)
    assert not [n for n in names if re.match(r"(torch|torchvision|nvidia_|triton)[-_]", n)], names
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["target_has"]["torch"] == distribution("torch").version.split("+")[0]
    # the notebook holds the script's cells, in order
    script = (out / bundle.SCRIPT).read_text()
    cells = ["".join(c["source"]) for c in json.loads((out / bundle.NOTEBOOK).read_text())["cells"]]
    assert len(cells) >= 4 and "\n".join(cells) + "\n" == script

    # a fresh torch-only Python: torch visible, the package not; then pip with the bundle only
    root = tmp_path_factory.mktemp("torch-only")
    python = torch_only_python(root)
    env = isolated_env()
    probe = "import importlib.util as u; print(u.find_spec('nnunet_vasculature') is None, u.find_spec('torch') is None)"
    # cwd: not the checkout (python -c and -m put the working folder on sys.path)
    assert subprocess.run([str(python), "-c", probe], env=env, capture_output=True, text=True, cwd=root,
                          check=True).stdout.split() == ["True", "False"]
    python, r = installed_torch_only_python(base)
    assert r is None or r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    root = python.parents[2]
    check = ("import torch, nnunetv2, nnunet_vasculature.cli, nnunet_vasculature.export.kaggle; "
             "print(nnunet_vasculature.__version__, torch.__file__)")
    r = subprocess.run([str(python), "-c", check], env=env, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    version, torch_file = r.stdout.split()
    assert version == nnunet_vasculature_version() and torch_file.startswith(str(root / "torch-site"))
    assert not list((root / "venv").rglob("site-packages/torch/__init__.py"))      # torch was not reinstalled


def nnunet_vasculature_version():
    import nnunet_vasculature
    return nnunet_vasculature.__version__


@pytest.mark.slow
@needs_wheelhouse
def test_platform_without_a_wheel_is_named_in_one_line(tmp_path, capsys):
    code = bundle_cli(["-o", str(tmp_path / "win"), "--python-version", PYTHON, "--platform", "win_amd64",
                       "--find-links", str(WHEELHOUSE)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "win_amd64" in err, err
    named = re.search(r"no wheel of ([A-Za-z0-9_.\-]+)", err)
    assert named, err
    # the dependency named has wheels here, none of them for Windows or pure Python
    wheels = [p.name for p in WHEELHOUSE.glob("*.whl")
              if bundle.normalize(p.name.split("-")[0]) == bundle.normalize(named.group(1))]
    assert wheels and not [w for w in wheels if "win" in w or w.endswith("-none-any.whl")], wheels
    assert not (tmp_path / "win").exists()


def test_bundle_option_checks_and_pip_isolation(tmp_path, capsys, monkeypatch):
    assert bundle_cli(["-o", str(tmp_path / "b"), "--python-version", "3", "--find-links", str(tmp_path)]) == 2
    assert "--python-version 3" in capsys.readouterr().err
    assert bundle_cli(["-o", str(tmp_path / "b"), "--find-links", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    monkeypatch.setenv("PIP_FIND_LINKS", "/somewhere")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///somewhere")
    env = bundle.pip_env()
    assert env["PIP_CONFIG_FILE"] == os.devnull and not [k for k in env if k.startswith("PIP_") and
                                                          k != "PIP_CONFIG_FILE"]
    assert bundle.expand_platforms(["manylinux_2_17_x86_64"])[:2] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert "manylinux1_x86_64" in bundle.expand_platforms(["manylinux_2_35_x86_64"])


@pytest.mark.slow
@needs_wheelhouse
def test_gpu_run_cpu_smoke(tmp_path_factory):
    """benchmarks/gpu_run.sh --cpu-smoke: install from the bundle, stock training, stock and our prediction, table."""
    base = tmp_path_factory.getbasetemp()
    wheels = shared_bundle(base)
    python, r = installed_torch_only_python(base)
    assert r is None or r.returncode == 0, r.stderr[-2000:]
    out, work = tmp_path_factory.mktemp("gpu-run-out"), tmp_path_factory.mktemp("gpu-run-work")
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--bundle", str(wheels), "--python",
                        str(python), "--cpu-smoke", "--work", str(work)],
                       env=isolated_env(OUT=str(out), OMP_NUM_THREADS="1"), capture_output=True, text=True, cwd=work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    meta = json.loads((out / "gpu_run.json").read_text())
    steps = {s["step"]: s for s in meta["steps"]}
    assert set(steps) >= {"install", "synthesize", "convert", "plan_preprocess", "train_stock", "predict_stock",
                          "predict_ours"} and all(s["rc"] == 0 for s in steps.values())
    assert meta["smoke"] and meta["device"] == "cpu" and meta["agreement"]["voxels"] > 0
    table = (out / "gpu_run.md").read_text()
    assert "| predict_ours |" in table and "Dice" in table
