"""End to end on CPU: tiny v1 checkpoint -> import-pretrained -> stock preprocess -> stock nnUNetv2_train
with VesselTransferTrainer found through nnUNet_extTrainer."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import write_task008_zip
from nnunet_vasculature.inference.model import read_checkpoint
from nnunet_vasculature.trainers import ext_trainer_value

TEST_TRAINER = '''
from nnunet_vasculature.trainers.levers import _Boundary, _ScaleAug
from nnunet_vasculature.trainers.vessel_transfer import VesselTransferTrainer_sourceHead


# the two training levers ride along (their effect on the first steps is small): the log shows that
# stock nnUNetv2_train used them
class VesselTransferTrainer_ci(_ScaleAug, _Boundary, VesselTransferTrainer_sourceHead):
    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"ci loss: {type(self.loss.loss).__name__}")
'''


def _run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.mark.slow
def test_import_preprocess_train(tmp_path, nnunet_dirs, kaggle_small):
    env = dict(os.environ, nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", OMP_NUM_THREADS="2")
    bindir = Path(sys.executable).parent
    cli = [str(bindir / "nnunet-vasculature")]
    _run(cli + ["convert", "sennet", str(kaggle_small), "-d", "501", "--kidneys", "kidney_1_dense", "kidney_2",
                "kidney_5"], env)
    zpath, _ = write_task008_zip(tmp_path / "Task008_HepaticVessel.zip", base=4, folds=(0, 1),
                                 patch_fullres=(16, 32, 32), configurations=("3d_lowres", "3d_fullres"))
    out = _run(cli + ["import-pretrained", "-i", str(zpath), "-d", "501"], env)
    assert "nnUNetv2_train 501 3d_fullres 0 -tr VesselTransferTrainer -p nnUNetPlans_Task008" in out
    pre = nnunet_dirs["preprocessed"] / "Dataset501_SenNet"
    plans = json.loads((pre / "nnUNetPlans_Task008.json").read_text())
    default = json.loads((pre / "nnUNetPlans.json").read_text())
    cfg, dcfg = plans["configurations"]["3d_fullres"], default["configurations"]["3d_fullres"]
    # source architecture and patch, target spacing and normalisation
    assert cfg["patch_size"] == [16, 32, 32]
    assert cfg["architecture"]["network_class_name"].endswith("V1CompatibleUNet")
    assert cfg["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [1, 3, 3]
    assert cfg["spacing"] == dcfg["spacing"] == [50.0, 50.0, 50.0]
    assert cfg["normalization_schemes"] == dcfg["normalization_schemes"]
    imported = torch.load(pre / "nnUNetPlans_Task008__3d_fullres__pretrained.pth", weights_only=True)["network_weights"]

    _run([str(bindir / "nnUNetv2_preprocess"), "-d", "501", "-plans_name", "nnUNetPlans_Task008",
          "-c", "3d_fullres", "-np", "1"], env)
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "ci_trainers.py").write_text(TEST_TRAINER)
    env["nnUNet_extTrainer"] = os.pathsep.join([ext_trainer_value(), str(ext)])
    _run([str(bindir / "nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", "VesselTransferTrainer_ci",
                "-p", "nnUNetPlans_Task008", "-device", "cpu"], env)
    fold = (nnunet_dirs["results"] / "Dataset501_SenNet" / "VesselTransferTrainer_ci__nnUNetPlans_Task008__3d_fullres"
            / "fold_0")
    ckpt = read_checkpoint(fold / "checkpoint_final.pth")       # the product's weights-only reader, on stock output
    assert ckpt["current_epoch"] == 1
    trained = ckpt["network_weights"]
    # the encoder started from the imported weights: training moved it (so the comparison is not of an
    # untouched copy), yet after 2 warm-up steps at a small LR every stem weight is still within 5 % of the
    # imported range of its value; a network that ignored the import starts from nnU-Net's random
    # initialisation, whose weights differ from the imported ones by about their whole range
    key = "encoder.stages.0.0.convs.0.conv.weight"
    drift = (trained[key] - imported[key]).abs().max().item()
    assert 0 < drift < 0.05 * imported[key].abs().max().item()
    # the 2-class head started from the source's background and vessel channels
    seg = [k for k in trained if ".seg_layers." in k and k.endswith("weight")][-1]
    assert trained[seg].shape[0] == 2
    assert torch.allclose(trained[seg], imported[seg][[0, 1]], atol=0.05)
    log = next(p for p in fold.iterdir() if p.name.startswith("training_log"))
    assert "loaded transfer weights" in log.read_text()
    assert "ci loss: _PlusBoundary" in log.read_text()
