#!/usr/bin/env bash
# Prepared GPU run: the Kaggle situation on a bare machine that has Python, torch and torchvision only.
#
#   OUT=/where/to/write benchmarks/gpu_run.sh --bundle DIR [--python PY] [--cpu-smoke] [--work DIR]
#
# 1. installs nnunet-vasculature from the bundle (`nnunet-vasculature bundle -o DIR --python-version X.Y
#    --platform manylinux_2_N_ARCH` of this machine, docs/kaggle.md; pip isolated from the machine's pip
#    configuration, no index);
# 2. synthesizes SenNet-like kidneys (real kidney_1_dense shape; --cpu-smoke: the small ones), converts them,
#    plans and preprocesses them with stock nnU-Net;
# 3. trains with stock nnUNetv2_train (nnUNetTrainer_demo: stock trainer, $SCHEDULE epochs x iterations);
# 4. predicts the same volume with stock nnUNetv2_predict and with `nnunet-vasculature predict`;
# 5. writes $OUT/gpu_run.md (the table: step, seconds, peak host RSS, agreement of the two predictions) and
#    $OUT/gpu_run.json.
# --cpu-smoke: tiny sizes on CPU (a 3-stage network, 1 epoch x 2 iterations): checks the script, not speed.
set -euo pipefail

BUNDLE="" PYTHON_BIN="${PYTHON:-python3}" SMOKE=0 WORK=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bundle) BUNDLE="$2"; shift 2 ;;
        --python) PYTHON_BIN="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$BUNDLE" && -d "$BUNDLE" ]] || { echo "error: --bundle DIR (made by 'nnunet-vasculature bundle') is required" >&2; exit 2; }
OUT="${OUT:-$PWD/gpu-run-out}"
mkdir -p "$OUT"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
BUNDLE="$(cd "$BUNDLE" && pwd)"
cd "$WORK"

if [[ $SMOKE == 1 ]]; then
    DEVICE=cpu SCALE=small SCHEDULE="${SCHEDULE:-1x2}" PLANS=nnUNetPlans_smoke
else
    DEVICE=cuda SCALE=full SCHEDULE="${SCHEDULE:-2x50}" PLANS=nnUNetPlans
fi
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
export nnUNet_vasculature_demo_schedule="$SCHEDULE" nnUNet_vasculature_demo_validation=0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
ROWS="$WORK/rows.jsonl"
: > "$ROWS"

# timed STEP NAME -- COMMAND...: one line per step; seconds and peak RSS of the command's processes
timed() {
    local name="$1"; shift
    echo "[$(date +%T)] $name: $*"
    "$PYTHON_BIN" - "$name" "$ROWS" "$@" <<'PY'
import json, resource, subprocess, sys, time
name, rows, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.time()
rc = subprocess.call(cmd)
seconds = time.time() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
with open(rows, "a") as f:
    f.write(json.dumps({"step": name, "seconds": round(seconds, 1), "peak_rss_gib": round(rss, 2), "rc": rc}) + "\n")
print(f"    {name}: {seconds:.1f} s, peak RSS {rss:.2f} GiB, exit {rc}")
sys.exit(rc)
PY
}

# 1. install from the bundle, isolated from the machine's pip configuration
timed install env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    "$PYTHON_BIN" -m pip --isolated install --no-index --find-links "$BUNDLE" -q nnunet-vasculature
BIN="$("$PYTHON_BIN" -c 'import sys, os; print(os.path.dirname(sys.executable))')"
NV=("$PYTHON_BIN" -m nnunet_vasculature.cli)
eval "$("${NV[@]}" env)"          # nnUNet_extTrainer: our trainers (and nnUNetTrainer_demo) for stock commands

# 2. data, conversion, stock planning and preprocessing
timed synthesize "${NV[@]}" synthesize sennet -o "$WORK/kaggle" --scale "$SCALE" --seed 0
timed convert "${NV[@]}" convert sennet "$WORK/kaggle" -d 501
timed plan_preprocess "$BIN/nnUNetv2_plan_and_preprocess" -d 501 -c 3d_fullres -np 2
if [[ $SMOKE == 1 ]]; then
    "$PYTHON_BIN" -c "
from pathlib import Path
from nnunet_vasculature.demo.cpu_plans import write_small_plans
write_small_plans(Path('$nnUNet_preprocessed') / 'Dataset501_SenNet', '3d_fullres', target='$PLANS', n_stages=3,
                  max_features=8, patch=(16, 32, 32), batch_size=2)"
fi

# 3. stock training
timed train_stock "$BIN/nnUNetv2_train" 501 3d_fullres all -tr nnUNetTrainer_demo -p "$PLANS" -device "$DEVICE"
MODEL="$nnUNet_results/Dataset501_SenNet/nnUNetTrainer_demo__${PLANS}__3d_fullres"

# 4. the same volume predicted by stock nnU-Net and by nnunet-vasculature
CASE="$(ls "$nnUNet_raw/Dataset501_SenNet/imagesTr" | grep '_0000.tif$' | head -1)"
CASE="${CASE%_0000.tif}"
mkdir -p "$WORK/input"
cp "$nnUNet_raw/Dataset501_SenNet/imagesTr/${CASE}_0000.tif" "$nnUNet_raw/Dataset501_SenNet/imagesTr/${CASE}.json" "$WORK/input/"
timed predict_stock "$BIN/nnUNetv2_predict" -i "$WORK/input" -o "$WORK/stock" -d 501 -c 3d_fullres \
    -tr nnUNetTrainer_demo -p "$PLANS" -f all -device "$DEVICE" --disable_tta
timed predict_ours "${NV[@]}" predict -i "$WORK/input/${CASE}_0000.tif" -o "$WORK/ours.zarr" -m "$MODEL" -f all \
    -device "$DEVICE" --disable_tta

# 5. the table
"$PYTHON_BIN" - "$ROWS" "$WORK" "$CASE" "$OUT" "$SMOKE" "$DEVICE" "$SCHEDULE" <<'PY'
import json, sys
from pathlib import Path
import numpy as np, tifffile, zarr, torch
rows_file, work, case, out, smoke, device, schedule = sys.argv[1:]
rows = [json.loads(line) for line in open(rows_file)]
stock = tifffile.imread(Path(work) / "stock" / f"{case}.tif") > 0
group = zarr.open_group(str(Path(work) / "ours.zarr"), mode="r")
ours = np.asarray(group[list(group.array_keys())[0]]) >= 128
both, either = np.logical_and(stock, ours).sum(), stock.sum() + ours.sum()
agreement = {"voxels": int(stock.size), "differing_voxels": int((stock != ours).sum()),
             "dice_stock_vs_ours": float(2 * both / either) if either else 1.0}
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
meta = {"smoke": smoke == "1", "device": device, "gpu": gpu, "schedule": schedule, "torch": torch.__version__,
        "shape": list(stock.shape), "agreement": agreement, "steps": rows}
Path(out, "gpu_run.json").write_text(json.dumps(meta, indent=1))
lines = [f"# gpu_run.sh ({'CPU smoke' if smoke == '1' else 'real size'}; device {device}, GPU {gpu}, torch "
         f"{torch.__version__}, schedule {schedule})", "", "| step | seconds | peak host RSS (GiB) |", "|---|---|---|"]
lines += [f"| {r['step']} | {r['seconds']} | {r['peak_rss_gib']} |" for r in rows]
lines += ["", f"Predicted volume {tuple(stock.shape)}: stock nnUNetv2_predict vs nnunet-vasculature predict "
          f"(threshold 0.5): {agreement['differing_voxels']} differing voxels, Dice {agreement['dice_stock_vs_ours']:.6f}"]
Path(out, "gpu_run.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "wrote $OUT/gpu_run.md and $OUT/gpu_run.json"
