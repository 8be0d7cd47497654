"""Real-size CPU smoke of the product: a Task008-size v1 model (real v1 Generic_UNet, 2020 zip format) ->
synthetic kidney of the real kidney_1_dense shape -> convert -> import-pretrained -> stock preprocess ->
stock nnUNetv2_train with a short VesselTransferTrainer -> streaming prediction of one full row of tiles
of the largest Kaggle plane (1706x1510), plus the GPU memory the predictor will need for that plane.
Every step runs in a fresh process; peak RSS is its VmHWM (other processes it spawns: sampled VmHWM).
Both tables are appended to the run records (`python -m benchmarks --table real_size`).

    .venv/bin/python -m benchmarks real_size [--quick] [--out bench-data/real_size]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from benchmarks.common import REPORT, peak_rss_kib, process_tree, record, table

ROOT = Path(__file__).resolve().parents[1]

ENTRY = REPORT + """
import sys, time
from importlib.metadata import entry_points
sys.argv, t = sys.argv[1:], time.time()
try:
    rc = next(iter(entry_points(group="console_scripts", name=sys.argv[0]))).load()()
except SystemExit as e:
    rc = e.code
if rc not in (None, 0):
    raise SystemExit(rc)
report(seconds=time.time() - t)
"""
ZIP = REPORT + """
import sys, json, time
from pathlib import Path
from benchmarks.common import write_task008_zip
c, t = json.loads(sys.argv[2]), time.time()
_, nets = write_task008_zip(Path(sys.argv[1]), base=c["base"], folds=(0,), pool=c["pool"], conv=c["conv"],
                            patch_fullres=c["patch"], patch_lowres=c["patch"], configurations=("3d_fullres",))
report(seconds=time.time() - t, params=sum(p.numel() for p in nets[("3d_fullres", 0)].parameters()))
"""
# One tile through the trained network: fp32 on this CPU (time, live-tensor peak, RSS growth), then fp16 on the
# meta device (CUDA autocast keeps fp16 activations) with the same counter of live tensor bytes.
TILE = REPORT + """
import sys, time, weakref, torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from nnunet_vasculature.inference.options import PredictionOptions
from nnunet_vasculature.inference.streaming import StreamingPredictor
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
folder, H, W, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sp = StreamingPredictor(PredictionOptions.of(folder, ["all"], tta=False), torch.device("cpu"))
net, patch = sp.nets[0], sp.patch
class Live(TorchDispatchMode):   # bytes of tensors made by non-aliasing ops and still referenced
    live = peak = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            for t in [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]:
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self.free, n)
        return out
    def free(self, n):
        self.live -= n
def forward(x):
    with torch.inference_mode(), Live() as live:
        t = time.time()
        net(x)
        return live.peak, time.time() - t
def status(key):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key)) * 1024
x, rss0 = torch.randn(1, 1, *patch), status("VmRSS:")
peak32, _ = forward(x)
grow32 = status("VmHWM:") - rss0
_, t_tile = forward(x)
params = sum(p.numel() for p in net.parameters())
net.to("meta").half()
peak16, _ = forward(torch.empty(1, 1, *patch, device="meta", dtype=torch.float16))
padded = [patch[0], max(H, patch[1]), max(W, patch[2])]
steps = {s: [len(a) for a in compute_steps_for_sliding_window(padded, patch, s)] for s in {0.5, 1.0, step}}
report(C=sp.lm.num_segmentation_heads, patch=patch, padded=padded, params=params, peak32=peak32, grow32=grow32,
       peak16=peak16, t_tile=t_tile, steps=steps, gauss=sp.gaussian.element_size())
"""
TRAINER_NAME = "VesselTransferTrainer_realSizeBench"
TRAINER = f'''import json, os, time
from nnunet_vasculature.trainers.vessel_transfer import VesselTransferTrainer

class {TRAINER_NAME}(VesselTransferTrainer):
    """benchmarks/real_size.py only: 1 epoch of a few iterations, timed steps, no final validation."""
    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch = 1, int(os.environ["REAL_SIZE_ITERS"])
        self.num_val_iterations_per_epoch, self.bench = 1, {{"train": [], "val": []}}
    def _timed(self, kind, step, batch):
        t = time.perf_counter(); out = step(batch); self.bench[kind].append(time.perf_counter() - t); return out
    def train_step(self, batch):
        return self._timed("train", super().train_step, batch)
    def validation_step(self, batch):
        return self._timed("val", super().validation_step, batch)
    def on_train_end(self):
        super().on_train_end()
        open(os.environ["REAL_SIZE_TIMES"], "w").write(json.dumps(self.bench))
    def perform_actual_validation(self, save_probabilities=False):
        self.print_to_log_file("real_size benchmark: final validation skipped")
'''


def _tree_hwm(pid: int, seen: dict[int, int]) -> None:
    """Record the VmHWM (KiB) of every process below ``pid`` in ``seen``."""
    for c in process_tree(pid):
        hwm = peak_rss_kib(c)
        if hwm:
            seen[c] = max(seen.get(c, 0), hwm)


def run_measured(code: str, args: list[str], env: dict, log: Path) -> dict:
    """Run ``code`` (calls report()) in a fresh interpreter; add wall time and sampled peaks of its children."""
    others: dict[int, int] = {}
    t = time.time()
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, env=env, cwd=ROOT)
        while p.poll() is None:
            _tree_hwm(p.pid, others)
            time.sleep(0.25)
    if p.returncode:
        raise RuntimeError(f"{args[:2]} failed ({p.returncode}):\n" + Path(f"{log}.err").read_text()[-3000:])
    res = json.loads(Path(f"{log}.out").read_text().strip().splitlines()[-1])
    res.update(wall=time.time() - t, others_mib=max(others.values(), default=0) / 1024, n_others=len(others))
    return res


def flag(sub: list[str], *spellings: str) -> str:
    """The spelling of an option that ``nnunet-vasculature SUB --help`` lists (options are being renamed)."""
    text = subprocess.run([str(Path(sys.executable).parent / "nnunet-vasculature"), *sub, "--help"],
                          capture_output=True, text=True).stdout
    found = [s for s in spellings if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text)]
    if not found:
        raise RuntimeError(f"nnunet-vasculature {' '.join(sub)} --help lists none of {spellings}")
    return found[0]


def mem(r: dict) -> str:
    extra = f" (+ {r['n_others']} other procs in its tree, largest {r['others_mib']:.0f} MiB)" if r["n_others"] else ""
    return f"peak RSS {r['peak_rss_mib']:.0f} MiB{extra}"


def gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


STEP_HEADER = ["step", "measured", "reference / notes"]


def gpu_table(t: dict) -> tuple[list[dict], float, float]:
    """Device buffers of StreamingPredictor._run_rows for a kidney of this plane (many rows of tiles), and
    the peak over its row loop with and without the torch.roll copies.

    Args:
        t: the TILE child's report (classes, patch, padded plane, parameters, fp16 activation peak, Gaussian
            element size).

    Returns:
        A row per buffer (``GPU buffer``, ``GiB``, ``formula``) and the two sums; the peak with and without the
        roll copies (bytes).
    """
    C, (pz, py, px), (_, H, W) = t["C"], t["patch"], t["padded"]
    plane, tile, P = pz * H * W, pz * py * px, t["params"]
    b = {"acc": (C * plane * 4, f"C·pz·H·W·4 = {C}·{pz}·{H}·{W}·4 (float32)"),
         "wsum": (plane * 4, "pz·H·W·4"),
         "input window x": (plane * 4, "pz·H·W·4 (+1 transiently when the next row's window is moved in)"),
         "gaussian": (tile * t["gauss"], f"pz·py·px·{t['gauss']}"),
         "weights fp32 + autocast fp16 copies": (P * 6, f"{P / 1e6:.1f} M params·(4+2)"),
         "activations, one tile, fp16": (t["peak16"], "live-tensor peak of a meta-device fp16 forward"),
         "per-tile temporaries": (C * tile * 12, "C·tile·(4+4+2+2): .float(), ·gaussian, two fp16 divisions"),
         "_finish temp (last row: n = pz)": (C * plane * 4, "C·n·H·W·4 (acc[:, :n] / wsum[:n]), n = pz at the end"),
         "torch.roll copy of acc": (C * plane * 4, "C·pz·H·W·4, each row"),
         "torch.roll copy of wsum": (plane * 4, "pz·H·W·4, each row, after the acc copy is freed")}
    total = sum(v for v, _ in b.values())
    rows = [{"GPU buffer": k, "GiB": v / 2 ** 30, "formula": f} for k, (v, f) in b.items()]
    rows += [{"GPU buffer": "sum of all rows (upper bound)", "GiB": total / 2 ** 30, "formula": "with the roll copies"},
             {"GPU buffer": "sum of all rows (upper bound)", "GiB": (total - C * plane * 4 - plane * 4) / 2 ** 30,
              "formula": "without the roll copies"}]
    persistent = sum(b[k][0] for k in ("acc", "wsum", "input window x", "gaussian"))
    tile_peak = P * 6 + t["peak16"] + C * tile * 12
    without = persistent + max(tile_peak, P * 4 + C * plane * 4, P * 4 + plane * 4)   # tiles, last _finish, window
    with_roll = max(without, persistent + P * 4 + C * plane * 4)                      # old acc + its rolled copy
    return rows, with_roll, without


def markdown(figures: dict) -> str:
    """What this benchmark prints, from its recorded figures.

    Args:
        figures: ``quick``, ``imports peak RSS (MiB)``, ``total wall (min)``, ``rows`` (dicts of ``step``,
            ``measured``, ``reference / notes``), ``plane`` (the padded [H, W] of :func:`gpu_table`) and ``gpu``
            (its rows).

    Returns:
        The heading line, the table of steps, the table of GPU buffers and the closing notes.
    """
    q, (h, w) = figures["quick"], figures["plane"]
    return "\n".join([
        f"Real-size CPU smoke{' (QUICK: reduced sizes)' if q else ''}; interpreter + torch + nnU-Net imported: "
        f"{figures['imports peak RSS (MiB)']:.0f} MiB; total wall {figures['total wall (min)']:.1f} min",
        table([[row[k] for k in STEP_HEADER] for row in figures["rows"]], STEP_HEADER),
        table([[row["GPU buffer"], gib(row["GiB"] * 2 ** 30), row["formula"]] for row in figures["gpu"]],
              [f"GPU buffer ({h}x{w} plane)", "bytes", "formula"]),
        "Peak = acc + wsum + window + gaussian + the largest transient. Without the roll copies the peak only "
        "drops if the last _finish stops dividing a whole acc-sized block at once: both add one acc.",
        f"reproduce: .venv/bin/python -m benchmarks real_size{' --quick' if q else ''}"])


def make_data(a: argparse.Namespace, out: Path, run) -> tuple[list, Path, list[str], int]:
    """Synthesize (reused when present), then convert a depth-reduced kidney with the real plane size."""
    rows, kaggle, scale = [], out / "kaggle_full", "small" if a.quick else "full"
    if kaggle.is_dir():
        rows.append([f"2a. synthesize --scale {scale}", f"reused {kaggle}", ""])
    else:
        s = run("synth", "nnunet-vasculature", "synthesize", "sennet", "-o", str(kaggle), "--scale", scale)
        rows.append([f"2a. synthesize --scale {scale}", f"{s['seconds']:.0f} s; {mem(s)}", ""])
    src = kaggle / "train" / "kidney_1_dense"
    names = sorted(p.name for p in (src / "images").iterdir())
    n = min(a.slices, len(names))
    z0 = (len(names) - n) // 2
    for part in ("images", "labels"):
        (out / "kaggle_subset" / "train" / src.name / part).mkdir(parents=True)
        for name in names[z0:z0 + n]:
            (out / "kaggle_subset" / "train" / src.name / part / name).symlink_to(src / part / name)
    shape = tifffile.TiffFile(src / "images" / names[0]).pages[0].shape
    chunk = [flag(["convert", "sennet"], "--chunk_slices", "-chunk_slices", "--chunk-slices"), "24"] if a.quick else []
    c = run("convert", "nnunet-vasculature", "convert", "sennet", str(out / "kaggle_subset"), "-d", "590", *chunk)
    cases = len(list((out / "nnUNet_raw").glob("Dataset590_*/imagesTr/*_0000.tif")))
    rows.append(["2b. convert sennet (depth-reduced)", f"{c['seconds']:.1f} s; {cases} cases; {mem(c)}",
                 f"slices {z0}..{z0 + n - 1} of {len(names)} (symlinks), real plane {shape[0]}x{shape[1]}: "
                 "preprocessing every chunk of the full kidney does not fit this run's budget"])
    return rows, src, names[z0:], cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="dry run on reduced sizes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-data" / "real_size")
    ap.add_argument("--slices", type=int, default=268, help="slices of the full kidney to convert/train on")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--step-size", type=float, default=None, help="default: 0.5, or 1.0 if 0.5 > 15 min")
    a = ap.parse_args()
    t_all, q = time.time(), a.quick
    cfg = {"base": 8 if q else 32, "patch": [16, 64, 64] if q else [64, 192, 192],
           "pool": [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], "conv": [[1, 3, 3]] + [[3, 3, 3]] * 5}
    plane = (160, 150) if q else (1706, 1510)
    out = (a.out / "quick" if q else a.out).resolve()
    for d in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "kaggle_subset", "predict", "logs"):
        shutil.rmtree(out / d, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    env = dict(os.environ, **{k: str(out / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")},
               nnUNet_compile="f", REAL_SIZE_ITERS=str(a.iterations),
               REAL_SIZE_TIMES=str(out / "logs" / "train_times.json"))
    run = lambda name, *args, code=ENTRY: run_measured(code, list(args), env, out / "logs" / name)  # noqa: E731
    base = run("base", code=REPORT + "import torch, nnunetv2.training.nnUNetTrainer.nnUNetTrainer\nreport()")
    z = run("zip", str(out / "Task008_HepaticVessel.zip"), json.dumps(cfg), code=ZIP)
    rows = [["1. v1 Task008-size zip (real Generic_UNet, 2 SGD steps)",
             f"{z['params'] / 1e6:.2f} M params; {z['seconds']:.0f} s; {mem(z)}",
             f"patch {cfg['patch']}, base {cfg['base']}, max 320; pool {cfg['pool']} / conv {cfg['conv']} "
             "ASSUMED (same size class, not the published Task008 plans)"]]
    data_rows, src, names, cases = make_data(a, out, run)
    rows += data_rows
    i = run("import", "nnunet-vasculature", "import-pretrained", "-i", str(out / "Task008_HepaticVessel.zip"),
            "-d", "590")
    rows.append(["3a. import-pretrained (incl. stock fingerprint + planning)", f"{i['seconds']:.0f} s; {mem(i)}", ""])
    p = run("preprocess", "nnUNetv2_preprocess", "-d", "590", "-plans_name", "nnUNetPlans_Task008", "-c", "3d_fullres",
            "-np", "1")
    rows.append(["3b. nnUNetv2_preprocess -np 1", f"{p['seconds']:.0f} s; {mem(p)}", f"{cases} cases"])
    with tempfile.TemporaryDirectory() as tmp:      # 4. training with a benchmark-only trainer
        Path(tmp, "real_size_bench_trainer.py").write_text(TRAINER)
        r = subprocess.run([str(Path(sys.executable).parent / "nnunet-vasculature"), "env"], env=env,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"nnunet-vasculature env failed:\n{r.stderr[-3000:]}")
        env["nnUNet_extTrainer"] = os.pathsep.join([shlex.split(r.stdout.split("=", 1)[1])[0], tmp])
        env["nnUNet_n_proc_DA"] = "0"    # not earlier: the stock planner calls torch.set_num_threads(it)
        tr = run("train", "nnUNetv2_train", "590", "3d_fullres", "all", "-tr", TRAINER_NAME, "-p",
                 "nnUNetPlans_Task008", "-device", "cpu")
        times = json.loads(Path(env["REAL_SIZE_TIMES"]).read_text())
        model = next((out / "nnUNet_results").glob(f"Dataset590_*/{TRAINER_NAME}__nnUNetPlans_Task008__3d_fullres"))
        epoch = re.findall(r"Epoch time: ([\d.]+) s", next(model.glob("fold_all/training_log_*.txt")).read_text())
        plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
        rows.append([f"4. nnUNetv2_train, 1 epoch x {a.iterations} it (+1 val it), batch {plans['batch_size']}",
                     f"train_step {', '.join(f'{s:.0f}' for s in times['train'])} s/it; val step "
                     f"{times['val'][0]:.0f} s; epoch {epoch[0]} s; process {tr['seconds']:.0f} s; {mem(tr)}",
                     "nnUNet_n_proc_DA=0: augmentation runs in the main process, its VmHWM is the tree's; "
                     "DOMAIN §6: default network 110-157 s/it on 2 cores"])
        # 6. first (its tile time picks the step size), then 5. prediction of one full row of tiles
        t = run("tile", str(model), str(plane[0]), str(plane[1]), str(a.step_size or 0.5), code=TILE)
        n05 = t["steps"]["0.5"][1] * t["steps"]["0.5"][2]
        step = a.step_size or (0.5 if n05 * t["t_tile"] <= 15 * 60 else 1.0)
        pz = t["patch"][0]
        img = np.stack([tifffile.imread(src / "images" / nm) for nm in names[:pz]])
        img = np.pad(img, ((0, 0), (0, plane[0] - img.shape[1]), (0, plane[1] - img.shape[2])), mode="symmetric")
        (out / "predict").mkdir()
        tifffile.imwrite(out / "predict" / "row_0000.tif", np.maximum(img, 1))    # no zero crop: whole plane
        (out / "predict" / "row.json").write_text(json.dumps({"spacing": plans["spacing"]}))
        tta = flag(["predict"], "--disable_tta", "-disable_tta", "--disable-tta")
        pr = run("predict", "nnunet-vasculature", "predict", "-i", str(out / "predict" / "row_0000.tif"), "-o",
                 str(out / "predict" / "out.zarr"), "-m", str(model), "-f", "all", "-device", "cpu", tta,
                 flag(["predict"], "-step_size", "--step_size", "--step-size"), str(step))
    grid = t["steps"][str(step)]    # the predictor's own tiling: nnU-Net's steps on the padded row
    tiles = grid[0] * grid[1] * grid[2]
    secs = re.findall(r"\) in ([\d.]+) s", (out / "logs" / "predict.out").read_text())
    secs = float(secs[-1]) if secs else pr["seconds"]
    rows.append([f"5. predict one row {pz}x{plane[0]}x{plane[1]} (spacing = plans'), step {step}, {tta}",
                 f"{tiles} tiles ({'x'.join(map(str, grid))}); {secs / tiles:.1f} s/tile; predict {secs:.0f} s, "
                 f"process wall {pr['wall']:.0f} s; {mem(pr)}",
                 f"bare fp32 forward of one tile {t['t_tile']:.1f} s (same run); "
                 f"step 0.5 would be {n05} tiles (~{n05 * t['t_tile'] / 60:.0f} min)"])
    gpu, with_roll, without = gpu_table(t)
    rows.append(["6. activations of one tile (v2 network, inference_mode)",
                 f"fp16 {gib(t['peak16'])}; fp32 {gib(t['peak32'])}", "live-tensor peak (TorchDispatchMode; fp16 on "
                 f"the meta device); fp32 CPU RSS growth {gib(t['grow32'])}"])
    rows.append([f"6. GPU memory, predictor, {plane[0]}x{plane[1]} plane",
                 f"{gib(with_roll)} with roll copies; {gib(without)} without",
                 "peak over the row loop; excl. CUDA context, cuDNN workspace, allocator fragmentation"])
    figures = {"quick": q, "imports peak RSS (MiB)": base["peak_rss_mib"],
               "total wall (min)": (time.time() - t_all) / 60, "rows": [dict(zip(STEP_HEADER, row)) for row in rows],
               "plane": list(t["padded"][1:]), "gpu": gpu,
               "GPU peak with roll copies (GiB)": with_roll / 2 ** 30, "GPU peak without (GiB)": without / 2 ** 30}
    print(markdown(figures))
    record("real_size", figures, a)


if __name__ == "__main__":
    main()
