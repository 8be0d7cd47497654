"""Helpers shared by the benchmark scripts: timing, peak RSS of a child process, table printing, the run
records (`record`) that `python -m benchmarks --table NAME` renders, and the nnU-Net v1 download of 2020 rebuilt
with the real v1 network (`write_task008_zip`, also the tests' reference for the v1 import)."""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import pickle
import platform
import shlex
import subprocess
import sys
import time
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# Peak RSS from /proc/self/status VmHWM: ru_maxrss is not used because Linux carries the parent's
# high-water mark into a forked-then-exec'd child, which would hide children smaller than the parent.
REPORT = """
import json as _json
def report(**kw):
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    kw["peak_rss_mib"] = hwm / 1024
    print(_json.dumps(kw))
"""


def run_child(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it calls ``report(...)`` once, which adds its own peak RSS (MiB)."""
    r = subprocess.run([sys.executable, "-c", REPORT + code, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def kaggle_rle(img: np.ndarray) -> str:
    """The run-length snippet most Kaggle notebooks used (row-major, 1-based starts; "" when empty): the
    independent reference our encoder is checked and timed against."""
    pixels = np.concatenate([[0], img.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def table(rows: list[list], header: list[str]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in cols[1:]])


def mean_sd(values, f: str = ".3f") -> str:
    """``mean ± sd [min–max]`` (sample sd; no sd for one value)."""
    v = np.asarray(values, dtype=float)
    sd = f" ± {v.std(ddof=1):{f}}" if len(v) > 1 else ""
    return f"{v.mean():{f}}{sd} [{v.min():{f}}–{v.max():{f}}]"


def process_tree(pid: int) -> list[int]:
    """Every process below ``pid`` (parents read from /proc/*/stat)."""
    parent = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        me = todo.pop()
        kids = [c for c, p in parent.items() if p == me]
        out += kids
        todo += kids
    return out


def peak_rss_kib(pid: int) -> int:
    """A process's VmHWM (KiB); 0 once it is gone."""
    try:
        return next(int(x.split()[1]) for x in open(f"/proc/{pid}/status") if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


# ---- run records: benchmarks/runs/NAME.jsonl, one JSON line per run (nnU-Net's benchmark trainer writes a
# benchmark_result.json with the run's environment and figures; its summary script makes the table) ----

RUNS = Path(__file__).resolve().parent / "runs"
REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("torch", "nnunetv2", "numpy", "nnunet_vasculature")


def _git() -> dict:
    """The checkout's commit and whether tracked files differ from it (None where git is missing)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _machine() -> dict:
    """Cores, memory, load average and CPU model of this machine (Linux /proc where it exists)."""
    memory = model = None
    try:
        memory = next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal:")) / 2 ** 20
        model = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), None)
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": None if memory is None else round(memory, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_model": model or platform.processor()}


def _versions() -> dict:
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for package in VERSIONS:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def record(name: str, figures: dict, args, folder: Path = RUNS) -> dict:
    """Append one run record to ``folder/NAME.jsonl``: the machine, the versions, the git commit, the
    benchmark's name, parsed arguments and command line (``sys.argv[1:]``) and the figures it printed.

    Args:
        name: the benchmark's name (its module, e.g. ``metric``).
        figures: what it measured, JSON-serialisable; a list of dicts is a table (one dict a row, its keys the
            columns), any other value one figure.
        args: its parsed arguments (an ``argparse.Namespace`` or a dict); paths are written as strings.
        folder: where the records go (default ``benchmarks/runs``).

    Returns:
        The record written.
    """
    arguments = vars(args) if hasattr(args, "__dict__") else dict(args)
    entry = {"benchmark": name, "args": arguments, "argv": sys.argv[1:],
             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "git": _git(), "machine": _machine(), "versions": _versions(), "figures": figures}
    line = json.dumps(entry, default=str)           # serialise first: nothing half-written on a bad figure
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"{name}.jsonl", "a") as f:
        f.write(line + "\n")
    return json.loads(line)


def load_records(name: str, folder: Path = RUNS) -> list[dict]:
    """The run records of ``folder/NAME.jsonl`` written by :func:`record`, oldest first.

    Args:
        name: the benchmark's name.
        folder: where the records are.

    Returns:
        The records; lines of another schema (the experiments' own runs) are left out.
    """
    path = Path(folder) / f"{name}.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
            if isinstance(entry, dict) and "benchmark" in entry and "figures" in entry:
                records.append(entry)
    return records


def _cell(value) -> str:
    """A figure as a markdown table cell: floats to 4 significant digits, ``|`` escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def table_of(rows: list[dict]) -> str:
    """A markdown table of rows given as dicts (the columns: their keys, in first-seen order)."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    return table([[_cell(row.get(key)) for key in header] for row in rows], [_cell(key) for key in header])


def render(entry: dict) -> str:
    """Markdown of one run record: a line with the command, date, commit, machine and versions, then its
    figures (tables for lists of dicts, one bullet per other figure).

    Args:
        entry: a record as :func:`record` writes it.

    Returns:
        The markdown text.
    """
    m, v, git = entry["machine"], entry["versions"], entry["git"]
    args = shlex.join(entry["argv"])
    sha = "unknown commit" if not git.get("sha") else git["sha"][:10] + (" + local changes" if git["dirty"] else "")
    head = (f"`python -m benchmarks {entry['benchmark']}{' ' + args if args else ''}` — {entry['time'][:10]}, "
            f"{sha}; {m['cpus_usable']} of {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, load "
            f"{' '.join(f'{x:.2f}' for x in m['load_average'])}; Python {v['python']}, torch {v.get('torch')}, "
            f"nnunetv2 {v.get('nnunetv2')}, numpy {v.get('numpy')}, nnunet_vasculature {v.get('nnunet_vasculature')}")
    parts, bullets = [head], []
    for key, value in entry["figures"].items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            parts.append(table_of(value))
        else:
            bullets.append(f"- {key}: {_cell(value)}")
    return "\n\n".join(parts + (["\n".join(bullets)] if bullets else []))


# ---- the nnU-Net v1 pretrained download as it was written on 2020-03-31, rebuilt from documented facts ----
# Shared by benchmarks/real_size.py and the tests (they import it from here). It is an
# independent reference for the v1 import: nothing here uses the project's own v1 writer (demo/v1_export.py).
# The networks are the real v1 ``Generic_UNet`` (PyPI ``nnunet==1.7.1``, installed --no-deps by the Makefile;
# torch and nnunet are imported on use) and the optimiser a real ``torch.optim.SGD`` that took steps; only the
# serialisation is made to look like 2020 (DOMAIN.md section 5, Zenodo record 3734294):
#
# - zip members start at the configuration folder (no ``nnUNet/`` prefix); ``2d``, ``3d_lowres``,
#   ``3d_fullres`` and ``3d_cascade_fullres`` each with ``plans.pkl``, ``postprocessing.json`` and
#   ``fold_0`` ... ``fold_4`` (``model_final_checkpoint.model``, ``.model.pkl``, ``debug.json``,
#   ``progress.png``), plus ``ensembles/``;
# - ``.model``: torch <= 1.4 legacy (non-zip) serialisation, pickle protocol 2, numpy globals under their
#   numpy 1.x names (``numpy.core.multiarray.*``), SGD momentum buffers saved where they lived (the GPU),
#   keys ``epoch``, ``state_dict``, ``optimizer_state_dict``, ``lr_scheduler_state_dict`` (None) and
#   ``plot_stuff`` (four lists of numpy float64 scalars);
# - ``.pkl``: pickle protocol 3 (Python 3.6/3.7's default), numpy 1.x names, numpy arrays and scalars,
#   OrderedDict; plans v2.1 with two 3D stages (0 = 3d_lowres, 1 = 3d_fullres).
#
# Every (configuration, fold) gets its own weights, so importing the wrong one fails a logit comparison.

V1_TASK = "Task008_HepaticVessel"
V1_PLANS_ID = "nnUNetPlansv2.1"
V1_TRAINER = "nnUNetTrainerV2"
V1_CASCADE_TRAINER = "nnUNetTrainerV2CascadeFullRes"
V1_NUM_CLASSES = 3          # background, vessel, tumour

# Both 3D stages share one layer structure (so a stage mix-up cannot show as a shape error, only in
# the logits) and differ in patch size and spacing, as Task008's lowres and fullres stages do.
V1_POOL_3D = [[1, 2, 2], [2, 2, 2]]
V1_CONV_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
V1_POOL_2D = [[2, 2], [2, 2]]
V1_CONV_2D = [[3, 3], [3, 3], [3, 3]]


# ---- 2020 serialisation -------------------------------------------------------------------------
class _Numpy1Pickler(pickle._Pickler):
    """Pure-Python pickler that writes numpy globals under their numpy 1.x module names."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"numpy.core{module[len('numpy._core'):]}\n{name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _numpy1_dumps(obj, protocol: int) -> bytes:
    buf = io.BytesIO()
    _Numpy1Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


# the "pickle module" torch.save uses for the legacy format: Pickler and dump
NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")
NUMPY1_PICKLE.Pickler = _Numpy1Pickler
NUMPY1_PICKLE.dump = lambda obj, f, protocol=2: _Numpy1Pickler(f, protocol=protocol).dump(obj)


@contextlib.contextmanager
def _tagged_as_gpu(tensors):
    """v1 saved the optimiser state where it lived: tag these tensors' storages 'cuda:0' while saving."""
    import torch
    ptrs = {t.untyped_storage().data_ptr() for t in tensors}
    entry = (1, lambda obj: "cuda:0" if obj.data_ptr() in ptrs else None, lambda obj, loc: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda e: e[0])
    try:
        yield
    finally:
        torch.serialization._package_registry.remove(entry)


def legacy_checkpoint_bytes(state_dict, optimizer_state_dict, plot_stuff, epoch: int = 1000) -> bytes:
    """A v1 ``model_final_checkpoint.model`` as torch 1.4 wrote it."""
    import torch
    cpu_sd = OrderedDict((k, v.cpu()) for k, v in state_dict.items())   # v1 moved weights to the CPU
    cpu_sd._metadata = getattr(state_dict, "_metadata", None)
    buf = io.BytesIO()
    momentum = [t for st in optimizer_state_dict["state"].values() for t in st.values() if torch.is_tensor(t)]
    payload = {"epoch": epoch, "state_dict": cpu_sd, "optimizer_state_dict": optimizer_state_dict,
               "lr_scheduler_state_dict": None, "plot_stuff": plot_stuff}
    with _tagged_as_gpu(momentum):
        torch.save(payload, buf, pickle_module=NUMPY1_PICKLE, pickle_protocol=2,
                   _use_new_zipfile_serialization=False)
    return buf.getvalue()


# ---- the real v1 network, trained a little ---------------------------------------------------------
def real_generic_unet(pool, conv, base: int, seed: int, num_input_channels: int = 1) -> torch.nn.Module:
    """nnUNetTrainerV2's ``Generic_UNet`` as v1 instantiates it (identity final nonlinearity)."""
    import torch
    from nnunet.network_architecture.generic_UNet import Generic_UNet
    from nnunet.network_architecture.initialization import InitWeights_He
    from torch import nn
    two_d = len(conv[0]) == 2
    torch.manual_seed(seed)
    net = Generic_UNet(num_input_channels, base, V1_NUM_CLASSES, len(pool), 2, 2,
                       nn.Conv2d if two_d else nn.Conv3d, nn.InstanceNorm2d if two_d else nn.InstanceNorm3d,
                       {"eps": 1e-5, "affine": True}, nn.Dropout2d if two_d else nn.Dropout3d,
                       {"p": 0, "inplace": True}, nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True},
                       True, False, lambda x: x, InitWeights_He(1e-2), pool, conv, False, True, True)
    with torch.no_grad():   # non-trivial norms and biases: a wrong mapping cannot pass by accident
        for name, p in net.named_parameters():
            if "instnorm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return net


def _sgd_state(net: torch.nn.Module, patch, channels: int) -> dict:
    """v1's optimiser (SGD, momentum 0.99, Nesterov) after two real steps: momentum buffers set."""
    import torch
    opt = torch.optim.SGD(net.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    net.train()
    for _ in range(2):
        out = net(torch.randn(1, channels, *patch))[0]
        loss = out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return opt.state_dict()


# ---- plans and metadata --------------------------------------------------------------------------
def _stage(patch, pool, conv, spacing, batch_size: int) -> dict:
    per_axis = [int(sum(p[i] > 1 for p in pool)) for i in range(len(patch))]
    return {"batch_size": batch_size, "num_pool_per_axis": per_axis,
            "patch_size": np.array(patch, dtype=np.int64), "median_patient_size_in_voxels":
            np.array([int(p * 3) for p in patch], dtype=np.int64), "current_spacing": np.array(spacing),
            "original_spacing": np.array([1.5, 0.8, 0.8]), "do_dummy_2D_data_aug": len(patch) == 2,
            "pool_op_kernel_sizes": pool, "conv_kernel_sizes": conv}


def _plans(stages: list, base: int) -> dict:
    """nnUNetPlansv2.1 as v1's planner pickled it (numpy arrays and scalars, OrderedDicts)."""
    intensity = OrderedDict([(0, OrderedDict([("median", np.float64(130.0)), ("mean", np.float64(132.4)),
                                              ("sd", np.float64(47.6)), ("mn", np.float64(-133.0)),
                                              ("mx", np.float64(1031.0)), ("percentile_99_5", np.float64(240.0)),
                                              ("percentile_00_5", np.float64(-3.0))]))])
    return {"num_stages": len(stages), "num_modalities": 1, "modalities": {0: "CT"},
            "normalization_schemes": OrderedDict([(0, "CT")]),
            "dataset_properties": {"all_classes": [1, 2], "modalities": {0: "CT"},
                                   "intensityproperties": intensity,
                                   "all_spacings": [np.array([5.0, 0.8, 0.8]), np.array([1.5, 0.7, 0.7])],
                                   "size_reductions": OrderedDict([("hepaticvessel_001", np.float64(1.0))])},
            "list_of_npz_files": ["hepaticvessel_001.npz"], "original_spacings": [np.array([5.0, 0.8, 0.8])],
            "original_sizes": [np.array([49, 512, 512])], "preprocessed_data_folder": "/nnUNet_preprocessed/Task008",
            "num_classes": V1_NUM_CLASSES - 1, "all_classes": [1, 2], "base_num_features": base,
            "use_mask_for_norm": OrderedDict([(0, False)]), "keep_only_largest_region": None,
            "min_region_size_per_class": None, "min_size_per_class": None, "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "data_identifier": "nnUNetData_plans_v2.1",
            "plans_per_stage": {i: s for i, s in enumerate(stages)}, "preprocessor_name": "GenericPreprocessor",
            "conv_per_stage": 2}


def _progress_png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00" * 32      # content is never read


V1_CONFIGURATIONS = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")


def write_task008_zip(path: Path, base: int = 8, folds=(0, 1, 2, 3, 4), pool=V1_POOL_3D, conv=V1_CONV_3D,
                      patch_lowres=(8, 16, 16), patch_fullres=(8, 24, 24), patch_2d=(24, 24),
                      configurations=V1_CONFIGURATIONS, spacing_fullres=(1.5, 0.8, 0.8)) -> tuple[Path, dict]:
    """The 2020 download at toy size (or any size: real_size builds a Task008-size one).

    Args:
        path: the zip to write.
        base: the network's base number of features.
        folds: the folds written for every configuration.
        pool, conv: the 3D stages' pooling and convolution kernel sizes.
        patch_lowres, patch_fullres, patch_2d: the stages' patch sizes.
        configurations: which of ``V1_CONFIGURATIONS`` the download holds.
        spacing_fullres: the 3d_fullres stage's spacing (3d_lowres: 1.6 times it).

    Returns:
        The zip and ``{(configuration, fold): the real v1 network whose weights it holds}``.
    """
    pool, conv = [list(p) for p in pool], [list(c) for c in conv]
    plans3d = _plans([_stage(patch_lowres, pool, conv, [s * 1.6 for s in spacing_fullres], 2),
                      _stage(patch_fullres, pool, conv, list(spacing_fullres), 2)], base)
    plans2d = _plans([_stage(patch_2d, V1_POOL_2D, V1_CONV_2D, list(spacing_fullres), 12)], base)
    plans2d["plans_per_stage"][0]["current_spacing"] = np.array(spacing_fullres[1:])
    configs = {   # configuration -> (trainer, plans, stage, pool, conv, patch, input channels)
        "2d": (V1_TRAINER, plans2d, 0, V1_POOL_2D, V1_CONV_2D, patch_2d, 1),
        "3d_lowres": (V1_TRAINER, plans3d, 0, pool, conv, patch_lowres, 1),
        "3d_fullres": (V1_TRAINER, plans3d, 1, pool, conv, patch_fullres, 1),
        # the cascade takes the image plus the one-hot lowres segmentation of the foreground classes
        "3d_cascade_fullres": (V1_CASCADE_TRAINER, plans3d, 1, pool, conv, patch_fullres, V1_NUM_CLASSES),
    }
    configs = {k: v for k, v in configs.items() if k in configurations}
    nets = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for ci, (config, (trainer, plans, stage, pool, conv, patch, ch)) in enumerate(configs.items()):
            base_dir = f"{config}/{V1_TASK}/{trainer}__{V1_PLANS_ID}"
            zf.writestr(f"{base_dir}/plans.pkl", _numpy1_dumps(plans, protocol=3))
            zf.writestr(f"{base_dir}/postprocessing.json", json.dumps(
                {"for_which_classes": [[1, 2], 1], "min_valid_object_sizes": {"1": 9, "2": 27},
                 "dc_per_class_raw": {"1": 0.61, "2": 0.68}, "dc_per_class_pp_final": {"1": 0.62, "2": 0.69}}))
            for f in folds:
                net = real_generic_unet(pool, conv, base, seed=100 * ci + f, num_input_channels=ch)
                opt_state = _sgd_state(net, patch, ch)
                plot_stuff = ([np.float64(-0.1 * e) for e in range(3)], [np.float64(-0.09 * e) for e in range(3)],
                              [], [np.float64(0.5 + 0.01 * e) for e in range(3)])
                fold_dir = f"{base_dir}/fold_{f}"
                zf.writestr(f"{fold_dir}/model_final_checkpoint.model",
                            legacy_checkpoint_bytes(net.state_dict(), opt_state, plot_stuff))
                init = (f"/nnUNet_preprocessed/{V1_TASK}/{V1_PLANS_ID}_plans_3D.pkl", f, f"/out/{fold_dir}",
                        f"/nnUNet_preprocessed/{V1_TASK}", True, stage, True, True, True)
                if trainer == V1_CASCADE_TRAINER:
                    init = init[:8] + ("nnUNetTrainerV2", True)
                meta = {"init": init, "name": trainer,
                        "class": f"<class 'nnunet.training.network_training.{trainer}.{trainer}'>", "plans": plans}
                zf.writestr(f"{fold_dir}/model_final_checkpoint.model.pkl", _numpy1_dumps(meta, protocol=3))
                zf.writestr(f"{fold_dir}/debug.json", json.dumps({"fold": str(f), "stage": str(stage)}))
                zf.writestr(f"{fold_dir}/progress.png", _progress_png())
                nets[(config, f)] = net.eval()
        ens = f"ensembles/{V1_TASK}/ensemble_2d__{V1_TRAINER}__{V1_PLANS_ID}--3d_fullres__{V1_TRAINER}__{V1_PLANS_ID}"
        zf.writestr(f"{ens}/postprocessing.json", json.dumps({"for_which_classes": [], "min_valid_object_sizes": {}}))
    return Path(path), nets
