import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch):
    """Fresh nnUNet_raw / _preprocessed / _results folders for one test."""
    dirs = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for k, d in dirs.items():
        d.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(dirs["raw"]))
    monkeypatch.setenv("nnUNet_preprocessed", str(dirs["preprocessed"]))
    monkeypatch.setenv("nnUNet_results", str(dirs["results"]))
    return dirs


@pytest.fixture(scope="session")
def kaggle_small(tmp_path_factory):
    """Synthetic kidneys in the Kaggle layout (made once per session)."""
    from nnunet_vasculature.synthetic.sennet import synthesize
    return synthesize(tmp_path_factory.mktemp("kaggle") / "blood-vessel-segmentation", seed=3)
