"""The offline-install tests' environment: the local wheel folder, a Python that has only torch and
torchvision, pip isolated from this machine's configuration, and the bundle the tests share."""
import argparse
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from nnunet_vasculature.errors import run_cli
from nnunet_vasculature.export import bundle

REPO = Path(__file__).resolve().parents[2]
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


