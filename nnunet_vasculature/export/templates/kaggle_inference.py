# %%
"""SenNet + HOA (Kaggle ``blood-vessel-segmentation``) submission with nnunet-vasculature, offline.

Written by ``nnunet-vasculature bundle`` next to the wheels; ``kaggle_inference.ipynb`` holds the same cells.
Attach to the notebook: the competition data, a dataset with the bundle folder, a dataset with MODEL.zip
(``nnunet-vasculature export-model``). Then run all cells (or ``python kaggle_inference.py [flags]``):

1. install the wheels offline, if nnunet-vasculature is not installed yet;
2. install the model (checked: zip members, their inflated sizes, plugin version);
3. ``nnunet-vasculature predict`` on every kidney of DATA/test, with a runtime estimate after the first
   kidney's first planes (a warning when the 9-hour budget is at risk);
4. ``nnunet-vasculature submit`` with the model's postprocessing.json -> submission.csv.

Flags: --data DIR, --model MODEL.zip, --wheels DIR, --out FILE, --device cuda|cpu, --work DIR, --disable_tta,
--budget_hours H, --poll_seconds S. Defaults are Kaggle's paths (/kaggle/input/..., /kaggle/working).
"""
import argparse
import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STARTED = time.time()
KAGGLE_INPUT = Path("/kaggle/input")


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SenNet submission with nnunet-vasculature, offline")
    p.add_argument("--data", type=Path, default=KAGGLE_INPUT / "blood-vessel-segmentation",
                   help="competition data (holds test/ and sample_submission.csv)")
    p.add_argument("--model", type=Path, help="MODEL.zip (default: the one *.zip under /kaggle/input/*/)")
    p.add_argument("--wheels", type=Path, help="bundle folder (default: the one under /kaggle/input/*/ holding "
                                               "the nnunet_vasculature wheel)")
    p.add_argument("--out", type=Path, default=Path("/kaggle/working/submission.csv"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--work", type=Path, default=Path("/kaggle/temp" if Path("/kaggle/temp").is_dir() else "/tmp")
                   / "nnunet_vasculature", help="scratch folder (installed model, probabilities)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    p.add_argument("--spacing", nargs="+", metavar="UM|KIDNEY=UM",
                   help="voxel size of test kidneys whose name is not known (KIDNEY=UM pairs, as predict takes)")
    p.add_argument("--budget_hours", type=float, default=9.0)
    p.add_argument("--poll_seconds", type=float, default=20.0, help="how often the runtime estimate looks")
    return p.parse_args([] if "ipykernel" in sys.modules else argv)


def check_paths(args: argparse.Namespace) -> None:
    """Refuse, in one line before anything is installed, a --data without test/ or a --model that is no file."""
    if not (args.data / "test").is_dir():
        what = "not found" if not args.data.exists() else "holds no test/ folder"
        sys.exit(f"error: {args.data}: {what} (--data: the competition data, with test/ and sample_submission.csv)")
    if args.model is not None and not args.model.is_file():
        what = "is a folder" if args.model.is_dir() else "not found"
        sys.exit(f"error: {args.model}: {what} (--model: the MODEL.zip that nnunet-vasculature export-model writes)")
    if args.wheels is not None and not args.wheels.is_dir():
        sys.exit(f"error: {args.wheels}: not a folder (--wheels: the bundle folder holding the wheels)")


ARGS = parse_args()
check_paths(ARGS)
print(f"[0:00:00] settings: data {ARGS.data}, device {ARGS.device}, work {ARGS.work}, out {ARGS.out}")

# %%
# 1. the wheels (offline): only when the package is missing
t0 = time.time()
try:
    import nnunet_vasculature
    print(f"step 1/4 wheels: nnunet-vasculature {nnunet_vasculature.__version__} already installed")
except ImportError:
    wheels = ARGS.wheels or next(iter(sorted(p.parent for p in KAGGLE_INPUT.glob("*/**/nnunet_vasculature-*.whl"))),
                                 None)
    if wheels is None:
        sys.exit("error: nnunet-vasculature is not installed and no bundle was found: pass --wheels DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--no-index", "--find-links", str(wheels),
           "--disable-pip-version-check", "-q", "nnunet-vasculature"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: pip install from {wheels} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    importlib.invalidate_caches()
    import nnunet_vasculature
    print(f"step 1/4 wheels: installed nnunet-vasculature {nnunet_vasculature.__version__} from {wheels} "
          f"in {time.time() - t0:.1f} s")

# %%
# 2. the model
from nnunet_vasculature.errors import UserError  # noqa: E402
from nnunet_vasculature.export import kaggle  # noqa: E402
from nnunet_vasculature.export.model_zip import install_model_zip  # noqa: E402
from nnunet_vasculature.io.model_record import model_postprocessing, read_record  # noqa: E402

t0 = time.time()
for name in ("nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed"):
    os.environ[name] = str(ARGS.work / name)
    (ARGS.work / name).mkdir(parents=True, exist_ok=True)
try:
    MODEL_ZIP = ARGS.model or kaggle.find_input(KAGGLE_INPUT, "**/*.zip", "model zips", "--model")
    MODEL = install_model_zip(MODEL_ZIP, ARGS.work / "nnUNet_results", overwrite=True)
    RECORD = read_record(MODEL)
    POSTPROCESSING = model_postprocessing(MODEL)
    if POSTPROCESSING is None:
        raise UserError(f"{MODEL_ZIP}: the model carries no postprocessing.json (export it with -pp)")
except UserError as e:
    sys.exit(f"error: {e}")
print(f"{kaggle.clock(STARTED)} step 2/4 model: {RECORD['model']['dataset']} {RECORD['model']['trainer']} folds "
      f"{' '.join(RECORD['model']['folds'])}, installed in {time.time() - t0:.1f} s")

# %%
# 3. predict every test kidney, with the runtime estimate
STORE = ARGS.work / "probabilities.zarr"
shutil.rmtree(STORE, ignore_errors=True)
COSTS = kaggle.kidney_costs(ARGS.data / "test", MODEL, RECORD["model"]["configuration"], ARGS.spacing)
print(f"{kaggle.clock(STARTED)} step 3/4 predict: " + ", ".join(f"{c.name} {c.planes} planes" for c in COSTS))
MONITOR = kaggle.BudgetMonitor(STORE, COSTS, STARTED, ARGS.budget_hours, ARGS.poll_seconds)
MONITOR.start_watching()
try:
    kaggle.run_command("predict", ["predict", "-i", ARGS.data / "test", "-o", STORE, "-m", MODEL,
                                   "-f", *RECORD["model"]["folds"], "-chk", RECORD["model"]["checkpoint"],
                                   "-device", ARGS.device, *(["--disable_tta"] if ARGS.disable_tta else []),
                                   *(["--spacing", *ARGS.spacing] if ARGS.spacing else [])],
                       STARTED)
except UserError as e:
    sys.exit(f"error: {e}")
finally:
    MONITOR.stop()

# %%
# 4. the submission
SAMPLE = ARGS.data / "sample_submission.csv"
try:
    kaggle.run_command("submit", ["submit", "-i", STORE, "-pp", POSTPROCESSING, "-o", ARGS.out,
                                  *(["--sample", SAMPLE] if SAMPLE.is_file() else [])], STARTED)
except UserError as e:
    sys.exit(f"error: {e}")
print(f"{kaggle.clock(STARTED)} step 4/4 submission: {ARGS.out}; total {time.time() - STARTED:.0f} s")
