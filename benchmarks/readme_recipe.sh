#!/usr/bin/env bash
# The README's "The real data, step by step" recipe, run as written on synthetic data on CPU, with the
# substitutions of "Trying the recipe on CPU first" (synthesize, standin, demo trainer, -device cpu).
# Usage: bash benchmarks/readme_recipe.sh [WORKDIR]   (default bench-data/readme_recipe; ~15 min on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$here/bench-data/readme_recipe}
export PATH="$here/.venv/bin:$PATH"
rm -rf "$work" && mkdir -p "$work" && cd "$work"
export nnUNet_raw=$PWD/nnUNet_raw nnUNet_preprocessed=$PWD/nnUNet_preprocessed nnUNet_results=$PWD/nnUNet_results
export nnUNet_vasculature_demo_schedule=${SCHEDULE:-4x20} nnUNet_n_proc_DA=1
eval "$(nnunet-vasculature env)"
K=blood-vessel-segmentation
nnunet-vasculature synthesize sennet -o $K
nnunet-vasculature standin -o Task008_standin.zip
# 1.-6. as in the README
nnunet-vasculature convert sennet $K/ -d 501
nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres -np 2 --verify_dataset_integrity
nnunet-vasculature import-pretrained -i Task008_standin.zip -d 501
nnUNetv2_train 501 3d_fullres 0 -tr VesselTransferTrainer_demo -p nnUNetPlans_Task008 -device cpu
nnunet-vasculature predict -i $K/train/kidney_1_dense -o val.zarr -d 501 -f 0 -tr VesselTransferTrainer_demo -device cpu
nnunet-vasculature predict -i $K/test -o test.zarr -d 501 -f 0 -tr VesselTransferTrainer_demo -device cpu
python -m nnunet_vasculature.postprocess tune -i val.zarr --labels $K/train/kidney_1_dense/labels \
    -o postprocessing.json --plot curve.png
python -m nnunet_vasculature.postprocess submit -i test.zarr -pp postprocessing.json -o submission.csv \
    --sample $K/sample_submission.csv
python -m nnunet_vasculature.postprocess validate submission.csv --sample $K/sample_submission.csv \
    --images $K/test
# the synthetic data's hidden test labels
nnunet-vasculature score --solution $K/solution.csv --submission submission.csv
