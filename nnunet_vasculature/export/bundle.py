"""``nnunet-vasculature bundle``: every wheel this package needs on a machine without internet (a Kaggle
notebook), plus the Kaggle inference script and notebook.

``pip install --no-index --find-links DIR nnunet-vasculature`` then installs it on a machine that has only
Python, torch and torchvision. How the wheel set is found, with pip only (no resolver of our own):

1. this package's wheel is built from its source (``pip wheel --no-deps``; an installed copy without source
   is downloaded by its version from the sources given);
2. pip resolves it for the target (``pip install --dry-run --report --target ... --only-binary=:all:
   --python-version V --platform P``): torch and torchvision are excluded by resolving against stand-in
   wheels of the torch and torchvision the target has (``--torch-version``/``--torchvision-version``, default
   those installed here) that declare no dependencies, so neither they nor their CUDA libraries are fetched
   (``--include-torch`` resolves and bundles the real ones);
3. a dependency published only as a source distribution is built here (``pip wheel --no-deps``) and bundled
   when the wheel is pure Python (``*-none-any``); one that needs compiling and has no wheel for the target
   is one line naming it;
4. the resolved wheels are fetched with ``pip download --no-deps``.

pip runs isolated from this machine's pip configuration (``--isolated``, ``PIP_CONFIG_FILE=/dev/null`` and no
``PIP_*`` variables): where wheels come from is only what the command says (``--find-links``, ``--index-url``;
default PyPI), so the bundle does not silently depend on a local wheel folder or extra index.

Default target: Kaggle's notebook image (:data:`KAGGLE_PYTHON`, :data:`KAGGLE_PLATFORMS`; see
``docs/kaggle.md`` for the source and date).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from nnunet_vasculature.errors import UserError, atomic_dir
from nnunet_vasculature.postprocess.files import check_outputs

# Kaggle/docker-python Dockerfile.tmpl at 78aaa43 (2026-08-12): Python 3.12 since "Upgrade to Python 3.12"
# (#1516, 2025-12-12); x86_64 Linux on Colab's runtime image (glibc 2.35 or newer assumed: manylinux_2_35).
KAGGLE_PYTHON = "3.12"
KAGGLE_PLATFORMS = ("manylinux_2_35_x86_64",)
EXCLUDED = ("torch", "torchvision")
STUB_LABEL = "zzbundlestub"          # local version label of the stand-in wheels (sorts after a real release)
PROJECT = "nnunet-vasculature"
SCRIPT = "kaggle_inference.py"
NOTEBOOK = "kaggle_inference.ipynb"
TEMPLATE = Path(__file__).resolve().parent / "templates" / SCRIPT
MAX_SOURCE_BUILDS = 30


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form (``Foo_bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def expand_platforms(platforms: Sequence[str]) -> list[str]:
    """Platform tags pip should accept for ``platforms``: ``manylinux_2_N_ARCH`` also accepts every older
    glibc (down to manylinux1) under its PEP 600 and legacy names (pip does not expand these itself).

    Args:
        platforms: tags as given (``--platform``).

    Returns:
        The tags, most specific first, without repeats.
    """
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out: list[str] = []
    for tag in platforms:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if not m:
            out.append(tag)
            continue
        glibc, arch = int(m.group(1)), m.group(2)
        for minor in range(glibc, 4, -1):
            out.append(f"manylinux_2_{minor}_{arch}")
            if minor in legacy:
                out.append(f"{legacy[minor]}_{arch}")
    return list(dict.fromkeys(out))


def pip_env() -> dict:
    """The environment of the pip processes: no ``PIP_*`` variable, no configuration file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def run_pip(args: Sequence[str], where: str) -> subprocess.CompletedProcess:
    """``python -m pip --isolated ARGS`` isolated from this machine's pip configuration.

    Args:
        args: pip's arguments.
        where: what a failure message names.

    Returns:
        The finished process (the caller reads its return code and output).
    """
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, env=pip_env(), capture_output=True, text=True)


def stub_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel of ``name`` at ``version+STUB_LABEL`` with no files and no dependencies: it stands, during
    resolution only, for what the target machine already has. Never installed.

    Args:
        folder: where to write it.
        name: the distribution name.
        version: its version (a release without local label).

    Returns:
        The wheel's path.
    """
    full = f"{version}+{STUB_LABEL}"
    dist = f"{name.replace('-', '_')}-{full}"
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {full}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: nnunet-vasculature bundle\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    out = Path(folder) / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name).split("+")[0]
    except PackageNotFoundError:
        return None


def project_source() -> Path | None:
    """The source folder of this package (a checkout or an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'^name\s*=\s*"nnunet-vasculature"', pyproject.read_text(), re.M):
        return root
    return None


def _own_wheel(folder: Path, sources: list[str]) -> Path:
    """This package's wheel, built from its source (or fetched by version when there is none)."""
    from nnunet_vasculature import __version__
    source = project_source()
    if source is not None:
        r = run_pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder), str(source)],
                    str(source))
        if r.returncode != 0:
            raise UserError(f"{source}: building the {PROJECT} wheel failed: {_last_error(r)}")
    else:
        r = run_pip(["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), *sources,
                     f"{PROJECT}=={__version__}"], PROJECT)
        if r.returncode != 0:
            raise UserError(f"{PROJECT}=={__version__}: no source here and no wheel in the given sources "
                            f"({_last_error(r)})")
    wheels = sorted(folder.glob("nnunet_vasculature-*.whl"))
    if not wheels:
        raise UserError(f"{folder}: no {PROJECT} wheel was made")
    return wheels[-1]


def _last_error(r: subprocess.CompletedProcess) -> str:
    if "No space left on device" in r.stderr + r.stdout:        # pip says "ERROR: Exception:" then a traceback
        return "no space left on the device"
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or ["pip failed"])[-1].removeprefix("ERROR: ")


def _missing_requirement(r: subprocess.CompletedProcess) -> str | None:
    """The requirement pip found no wheel for (also when a constraint pins it: then pip reports a conflict)."""
    text = r.stderr + r.stdout
    m = re.search(r"No matching distribution found for (\S+)", text) or \
        re.search(r"The user requested \(constraint\) (\S+)", text)
    return m.group(1) if m else None


def _build_pure_wheel(requirement: str, folder: Path, sources: list[str], target: str) -> Path:
    """A pure-Python wheel of ``requirement`` built from its source distribution, or a one-line UserError
    naming the requirement (no wheel for the target, and none can be built that runs there)."""
    scratch = Path(tempfile.mkdtemp(prefix="sdist-", dir=folder))
    r = run_pip(["wheel", "--no-deps", "--no-binary=:all:", "-q", "-w", str(scratch), *sources, requirement],
                requirement)
    built = sorted(scratch.glob("*.whl"))
    if r.returncode != 0 or not built:
        raise UserError(f"{target}: no wheel of {requirement} (and its source distribution could not be built "
                        f"here: {_last_error(r)})")
    wheel = built[0]
    if not wheel.name.endswith("-none-any.whl"):
        raise UserError(f"{target}: no wheel of {requirement} (its source builds {wheel.name}, which is "
                        f"compiled for this machine, not the target)")
    dest = folder / wheel.name
    shutil.move(str(wheel), dest)
    shutil.rmtree(scratch, ignore_errors=True)
    return dest


def _target_flags(python_version: str, platforms: Sequence[str]) -> list[str]:
    nodot = python_version.replace(".", "")
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
             "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none"]
    for tag in expand_platforms(platforms):
        flags += ["--platform", tag]
    return flags


def resolve(own_wheel: Path, python_version: str, platforms: Sequence[str], sources: list[str], scratch: Path,
            constraints: Sequence[Path] = (), stubs: dict[str, str] | None = None) -> list[dict]:
    """pip's resolution of ``own_wheel`` for the target: the report's ``install`` items, stand-ins left out.

    Args:
        own_wheel: this package's wheel.
        python_version: the target's Python (``3.12``).
        platforms: the target's platform tags.
        sources: pip's source options (``--find-links``, ``--index-url``, ``--no-index``).
        scratch: a folder for pip's report, the stand-ins and wheels built from source.
        constraints: pip constraint files to honour.
        stubs: distribution name -> version the target already has (stand-ins, see :func:`stub_wheel`).

    Returns:
        The report items to fetch (``metadata.name``, ``metadata.version``, ``download_info``).
    """
    target = f"Python {python_version} on {', '.join(platforms)}"
    built = scratch / "built"
    built.mkdir(exist_ok=True)
    extra = ["--find-links", str(built)]
    pins = scratch / "stand-ins.txt"
    if stubs:
        stub_dir = scratch / "stand-ins"
        stub_dir.mkdir(exist_ok=True)
        for name, version in stubs.items():
            stub_wheel(stub_dir, name, version)
        pins.write_text("".join(f"{name}=={version}\n" for name, version in stubs.items()))
        extra += ["--find-links", str(stub_dir), "-c", str(pins)]
    for c in constraints:
        extra += ["-c", str(c)]
    report = scratch / "report.json"
    for _ in range(MAX_SOURCE_BUILDS):
        r = run_pip(["install", "--dry-run", "--ignore-installed", "--report", str(report), "--target",
                     str(scratch / "target"), *_target_flags(python_version, platforms), *sources, *extra,
                     str(own_wheel)], str(own_wheel))
        if r.returncode == 0:
            break
        missing = _missing_requirement(r)
        if missing is None:
            raise UserError(f"{target}: pip cannot resolve {PROJECT}'s dependencies: {_last_error(r)}")
        name = normalize(re.split(r"[<>=!~;\[ ]", missing)[0])
        if name in (stubs or {}):
            raise UserError(f"{target}: {missing} is required, but the target has {name} {stubs[name]} "
                            f"(--{name}-version)")
        _build_pure_wheel(missing, built, sources, target)
    else:
        raise UserError(f"{target}: more than {MAX_SOURCE_BUILDS} dependencies without wheels")
    items = json.loads(report.read_text())["install"]
    return [i for i in items if not i["metadata"]["version"].endswith(f"+{STUB_LABEL}")]


def write_notebook(script: Path, notebook: Path) -> None:
    """The notebook of the Kaggle script: one code cell per ``# %%`` cell of the script, same text.

    Args:
        script: the script (cells start with ``# %%``).
        notebook: the .ipynb to write (nbformat 4).
    """
    cells, current = [], []
    for line in script.read_text().splitlines(keepends=True):
        if line.startswith("# %%") and current:
            cells.append(current)
            current = []
        current.append(line)
    if current:
        cells.append(current)
    nb = {"nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}},
          "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None,
                     "outputs": [], "source": [ln.rstrip("\n") + "\n" if j < len(c) - 1 else ln.rstrip("\n")
                                                for j, ln in enumerate(c)]}
                    for i, c in enumerate(cells)]}
    notebook.write_text(json.dumps(nb, indent=1))


def build_bundle(out: Path, python_version: str = KAGGLE_PYTHON, platforms: Sequence[str] = KAGGLE_PLATFORMS,
                 include_torch: bool = False, find_links: Sequence[Path] = (), index_url: str | None = None,
                 constraints: Sequence[Path] = (), torch_version: str | None = None,
                 torchvision_version: str | None = None, overwrite: bool = False) -> Path:
    """Write the bundle folder ``out`` (see the module's description).

    Args:
        out: the folder to write (complete or not at all).
        python_version: the target's Python, ``X.Y``.
        platforms: the target's platform tags (``manylinux_2_35_x86_64``, ``win_amd64``, ...).
        include_torch: also bundle torch and torchvision (and their dependencies).
        find_links: local wheel folders to take wheels from.
        index_url: the package index (default PyPI; with ``find_links`` and no index: no index at all).
        constraints: pip constraint files (e.g. the versions you tested with).
        torch_version: the target's torch (default: the one installed here).
        torchvision_version: the target's torchvision (default: the one installed here).
        overwrite: replace an existing ``out``.

    Returns:
        ``out``.
    """
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise UserError(f"--python-version {python_version}: give X.Y, e.g. {KAGGLE_PYTHON}")
    for folder in find_links:
        if not Path(folder).is_dir():
            raise UserError(f"--find-links {folder}: not a folder")
    check_outputs([*(("--find-links", f) for f in find_links), *(("-c", c) for c in constraints)], [("-o", out)])
    stubs = {}
    if not include_torch:
        for name, given in (("torch", torch_version), ("torchvision", torchvision_version)):
            version = given or _installed_version(name)
            if version is None:
                raise UserError(f"{name} is not installed here: give --{name}-version (the target's {name})")
            stubs[name] = version.split("+")[0]
    sources = [a for f in find_links for a in ("--find-links", str(Path(f).resolve()))]
    if index_url:
        sources += ["--index-url", index_url]
    elif find_links:
        sources.append("--no-index")
    out = Path(out)
    with atomic_dir(out, overwrite) as tmp, tempfile.TemporaryDirectory(prefix="bundle-") as scratch_name:
        scratch = Path(scratch_name)
        own = _own_wheel(tmp, sources)
        items = resolve(own, python_version, platforms, sources, scratch, constraints, stubs)
        pinned = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
                  if normalize(i["metadata"]["name"]) != PROJECT]
        fetch = ["download", "--no-deps", "-q", "-d", str(tmp), *_target_flags(python_version, platforms),
                 *sources, "--find-links", str(scratch / "built"), *pinned]
        r = run_pip(fetch, str(out))
        if r.returncode != 0:
            raise UserError(f"{out}: fetching the resolved wheels failed: {_last_error(r)}")
        shutil.copy(TEMPLATE, tmp / SCRIPT)
        write_notebook(tmp / SCRIPT, tmp / NOTEBOOK)
        wheels = sorted(p.name for p in tmp.glob("*.whl"))
        (tmp / "bundle.json").write_text(json.dumps({
            "python_version": python_version, "platforms": list(platforms), "include_torch": include_torch,
            "target_has": stubs, "wheels": wheels}, indent=1))
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    print(f"wrote {out}: {len(wheels)} wheels ({size / 2**20:.0f} MiB) for Python {python_version} on "
          f"{', '.join(platforms)}" + ("" if include_torch else
                                       f", without torch {stubs['torch']} / torchvision {stubs['torchvision']}")
          + f"; {SCRIPT} and {NOTEBOOK}")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bundle``.

    Args:
        sub: the CLI's sub-command parsers.
    """
    p = sub.add_parser("bundle", help="wheels of this package and its dependencies for an offline machine (Kaggle), "
                                      "plus the Kaggle inference script and notebook",
                       description="Write DIR with the wheels `pip install --no-index --find-links DIR "
                                   "nnunet-vasculature` needs on a machine with only Python, torch and torchvision, "
                                   f"plus {SCRIPT} and {NOTEBOOK}. pip's own configuration is ignored: wheels come "
                                   "from --find-links / --index-url (default PyPI).")
    p.add_argument("-o", dest="output", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--python-version", default=KAGGLE_PYTHON, help=f"target Python X.Y (default {KAGGLE_PYTHON}, "
                                                                   "Kaggle's notebook image)")
    p.add_argument("--platform", dest="platforms", action="append",
                   help=f"target platform tag, repeatable (default {' '.join(KAGGLE_PLATFORMS)}; manylinux_2_N "
                        "also accepts older glibc)")
    p.add_argument("--include-torch", action="store_true", help="also bundle torch and torchvision (GBs)")
    p.add_argument("--torch-version", help="the target's torch (default: the one installed here)")
    p.add_argument("--torchvision-version", help="the target's torchvision (default: the one installed here)")
    p.add_argument("--find-links", action="append", type=Path, default=[],
                   help="local wheel folder to take wheels from (repeatable; without --index-url: no index)")
    p.add_argument("--index-url", help="package index (default PyPI)")
    p.add_argument("-c", "--constraint", dest="constraints", action="append", type=Path, default=[],
                   help="pip constraints file (e.g. the versions you tested with)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=lambda a: build_bundle(a.output, a.python_version, a.platforms or KAGGLE_PLATFORMS,
                                               a.include_torch, a.find_links, a.index_url, a.constraints,
                                               a.torch_version, a.torchvision_version, a.overwrite))


__all__ = ["KAGGLE_PYTHON", "KAGGLE_PLATFORMS", "EXCLUDED", "normalize", "expand_platforms", "pip_env", "run_pip",
           "stub_wheel", "project_source", "resolve", "write_notebook", "build_bundle", "add_parser"]
