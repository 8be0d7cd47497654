"""bundle: `pip install --no-index --find-links DIR nnunet-vasculature` succeeds on a Python that has only torch
and torchvision (and their own dependencies), with pip isolated from this machine's pip configuration.

No network: the bundle is built from a local wheel folder (``$NNUNET_VASCULATURE_WHEELHOUSE``, default
``.venv/wheelhouse``, which ``make venv`` fills with ``nnunet-vasculature bundle`` while it has the network).
The torch-only Python is a fresh venv whose site sees this environment's torch, torchvision and their
dependencies through symbolic links in a folder on a ``.pth`` (no copy of the GBs of torch).
"""
import json
import os
import re
import subprocess
from importlib.metadata import distribution

import pytest
from helpers.bundle import (  # noqa: F401
    PYTHON,
    REPO,
    WHEELHOUSE,
    _closure,
    bundle_cli,
    installed_torch_only_python,
    isolated_env,
    local_platform,
    needs_wheelhouse,
    shared_bundle,
    torch_only_python,
)

from nnunet_vasculature.export import bundle


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
