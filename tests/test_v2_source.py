"""import-pretrained from nnU-Net v2 models (TotalSegmentator's Dataset008_HepaticVessel layout, any v2 export
zip or model folder), the stem adapted to other channel numbers, and the untrusted-zip checks (traversal,
code in checkpoints, zip bombs).

Unit fixtures are v2 model folders written here from dynamic_network_architectures' own classes, nnU-Net's
plans format and nnU-Net's checkpoint keys (``nnUNetTrainer.save_checkpoint``), not by the code under test;
the slow end-to-end test trains its source with stock ``nnUNetv2_train``.
"""
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_vasculature.cli import main
from nnunet_vasculature.errors import UserError
from nnunet_vasculature.pretrained.archive import ModelFiles
from nnunet_vasculature.pretrained.transfer import adapt_input_channels, build_network, load_source
from nnunet_vasculature.pretrained.v2_model import read_v2_model

TOTALSEG_LABELS = {"background": 0, "liver_vessels": 1, "liver_tumor": 2}
MODEL_DIR = "Dataset008_HepaticVessel/nnUNetTrainer__nnUNetPlans__3d_fullres"
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
FEATURES = [4, 8, 16]
PATCH = [8, 16, 16]


# ---- v2 model folders as nnU-Net writes them ------------------------------------------------------------
def _arch(resenc: bool = False) -> dict:
    """The ``architecture`` entry nnU-Net 2.8's planners write (PlainConvUNet, or the ResEnc presets')."""
    kw = {"n_stages": 3, "features_per_stage": FEATURES, "conv_op": "torch.nn.modules.conv.Conv3d",
          "kernel_sizes": KERNELS, "strides": STRIDES, "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
          "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
          "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
          "nonlin_kwargs": {"inplace": True}}
    if resenc:
        kw["n_blocks_per_stage"] = [1, 2, 2]
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kw["n_conv_per_stage"] = [2, 2, 2]
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return {"network_class_name": name, "arch_kwargs": kw, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                                   "nonlin"]}


def _plans(architecture: dict | None, old_format: bool = False, patch=PATCH) -> dict:
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
              "patch_size": list(patch), "median_image_size_in_voxels": [100, 200, 200], "spacing": [1.5, 0.8, 0.8],
              "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None},
              "batch_dice": False}
    if old_format:   # nnU-Net <= 2.3 (the format of TotalSegmentator's v2 releases)
        config.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": FEATURES[0],
                       "n_conv_per_stage_encoder": [2, 2, 2], "n_conv_per_stage_decoder": [1, 1],
                       "num_pool_per_axis": [1, 2, 2], "pool_op_kernel_sizes": STRIDES, "conv_kernel_sizes": KERNELS,
                       "unet_max_num_features": FEATURES[-1]})
    else:
        config["architecture"] = architecture
    return {"dataset_name": "Dataset008_HepaticVessel", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.5, 0.8, 0.8],
            "original_median_shape_after_transp": [100, 512, 512],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"max": 1000.0, "mean": 120.0, "median": 118.0,
                                                                  "min": -100.0, "percentile_00_5": -20.0,
                                                                  "percentile_99_5": 300.0, "std": 50.0}},
            "configurations": {"3d_fullres": config}}


def _network(channels: int, classes: int, resenc: bool = False, seed: int = 0) -> nn.Module:
    """The network, built with dynamic_network_architectures' classes directly (not through the plans)."""
    torch.manual_seed(seed)
    common = dict(input_channels=channels, n_stages=3, features_per_stage=FEATURES, conv_op=nn.Conv3d,
                  kernel_sizes=KERNELS, strides=STRIDES, num_classes=classes, n_conv_per_stage_decoder=[1, 1],
                  conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-05, "affine": True},
                  nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    net = ResidualEncoderUNet(n_blocks_per_stage=[1, 2, 2], **common) if resenc else \
        PlainConvUNet(n_conv_per_stage=[2, 2, 2], **common)
    with torch.no_grad():             # non-trivial norms and biases: a wrong mapping cannot pass by accident
        for name, p in net.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def _checkpoint(net: nn.Module, plans: dict, dataset_json: dict, **extra) -> dict:
    """The keys nnUNetTrainer.save_checkpoint writes, with numpy scalars in the log as nnU-Net's logger has."""
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)
    return {"network_weights": net.state_dict(), "optimizer_state": opt.state_dict(), "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)],
                        "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]], "train_losses": [-0.1],
                        "val_losses": [-0.1], "lrs": [0.01], "epoch_start_timestamps": [1.0],
                        "epoch_end_timestamps": [2.0]},
            "_best_ema": np.float32(0.5), "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2), **extra}


def write_v2_zip(path: Path, channels=("CT",), labels=TOTALSEG_LABELS, resenc=False, old_format=False, seed=0,
                 model_dirs=(MODEL_DIR,), checkpoint=None, plans=None, members=()) -> tuple[Path, nn.Module]:
    """An export zip in nnUNetv2_export_model_to_zip's layout (members relative to nnUNet_results)."""
    dataset_json = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": dict(labels),
                    "numTraining": 10, "file_ending": ".nii.gz"}
    plans = plans or _plans(_arch(resenc), old_format)
    heads = len(labels) if not any(isinstance(v, list) for v in labels.values()) else len(labels) - 1
    net = _network(len(channels), heads, resenc, seed)
    buf = __import__("io").BytesIO()
    torch.save(checkpoint if checkpoint is not None else _checkpoint(net, plans, dataset_json), buf)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in model_dirs:
            zf.writestr(f"{d}/plans.json", json.dumps(plans))
            zf.writestr(f"{d}/dataset.json", json.dumps(dataset_json))
            zf.writestr(f"{d}/dataset_fingerprint.json", json.dumps({"spacings": [[1.5, 0.8, 0.8]]}))
            zf.writestr(f"{d}/fold_0/checkpoint_final.pth", buf.getvalue())
            zf.writestr(f"{d}/fold_0/progress.png", b"\x89PNG\r\n\x1a\n")
        for name, data in members:
            zf.writestr(name, data)
    return path, net


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        out = net(x)
    return out[0] if isinstance(out, (list, tuple)) else out


# ---- reading v2 models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("resenc,old_format", [(False, False), (True, False), (False, True)],
                         ids=["PlainConvUNet", "ResEncUNet", "plans-format-2.1"])
def test_export_zip_gives_the_source_network(tmp_path, resenc, old_format):
    zpath, net = write_v2_zip(tmp_path / "Dataset008_HepaticVessel.zip", resenc=resenc, old_format=old_format)
    src = load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)
    assert (src.kind, src.name, src.num_input_channels, src.num_heads) == ("v2", "Dataset008_HepaticVessel", 1, 3)
    assert src.head_names == ["background", "liver_vessels", "liver_tumor"]
    assert src.patch_size == PATCH
    assert src.architecture["network_class_name"].endswith("ResidualEncoderUNet" if resenc else "PlainConvUNet")
    # the network nnU-Net builds from the recorded architecture, with the imported weights, is the source
    rebuilt = build_network(src.architecture, 1, 3)
    rebuilt.load_state_dict(src.weights, strict=True)
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(rebuilt, x), _logits(net, x))


@pytest.mark.parametrize("layout", ["dataset folder", "model folder"])
def test_v2_model_folder(tmp_path, layout):
    zpath, net = write_v2_zip(tmp_path / "export.zip")
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "results")
    folder = tmp_path / "results" / (MODEL_DIR.split("/")[0] if layout == "dataset folder" else MODEL_DIR)
    model = read_v2_model(ModelFiles(folder))
    assert (model.dataset, model.trainer, model.plans_identifier) == \
        ("Dataset008_HepaticVessel", "nnUNetTrainer", "nnUNetPlans")
    assert model.network_weights.keys() == net.state_dict().keys()


def test_several_trainers_need_tr_and_p(tmp_path):
    other = "Dataset008_HepaticVessel/nnUNetTrainerNoMirroring__nnUNetResEncUNetMPlans__3d_fullres"
    zpath, _ = write_v2_zip(tmp_path / "two.zip", model_dirs=(MODEL_DIR, other))
    with pytest.raises(UserError, match=r"several trainers/plans inside; choose with -tr TRAINER -p PLANS \(has: "
                                        r"Dataset008_HepaticVessel/nnUNetTrainerNoMirroring__nnUNetResEncUNetMPlans, "
                                        r"Dataset008_HepaticVessel/nnUNetTrainer__nnUNetPlans\)$"):
        read_v2_model(ModelFiles(zpath))
    assert read_v2_model(ModelFiles(zpath), trainer="nnUNetTrainer").trainer == "nnUNetTrainer"
    assert read_v2_model(ModelFiles(zpath), plans="nnUNetResEncUNetMPlans").trainer == "nnUNetTrainerNoMirroring"
    with pytest.raises(UserError, match=r"no model for -tr nnUNetTrainerX \(has: "):
        read_v2_model(ModelFiles(zpath), trainer="nnUNetTrainerX")


def test_several_datasets_are_named(tmp_path):
    spleen = MODEL_DIR.replace("008_Hepatic", "009_Spleen")
    zpath, _ = write_v2_zip(tmp_path / "two.zip", model_dirs=(MODEL_DIR, spleen))
    with pytest.raises(UserError, match="several datasets inside"):
        read_v2_model(ModelFiles(zpath))


def test_configuration_fold_and_checkpoint_are_chosen(tmp_path):
    zpath, _ = write_v2_zip(tmp_path / "m.zip")
    for kwargs, message in (({"configuration": "2d"}, r"no '2d' model \(has: 3d_fullres\)"),
                            ({"fold": "3"}, r"3d_fullres has no fold 3 \(has: 0\)"),
                            ({"checkpoint": "checkpoint_best.pth"}, r"fold_0 has no checkpoint_best.pth \(has: "
                                                                    r"checkpoint_final.pth; choose with -chk\)")):
        with pytest.raises(UserError, match=message):
            read_v2_model(ModelFiles(zpath), **kwargs)


def test_zip_without_a_model(tmp_path):
    z = tmp_path / "notes.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("Dataset008_HepaticVessel/readme.txt", "no model")
    with pytest.raises(UserError, match=r"notes.zip: neither an nnU-Net v1 model .* nor a v2 model .* inside$"):
        load_source(ModelFiles(z), "3d_fullres", "0", "checkpoint_final.pth", None, None)


def test_checkpoint_keys_that_do_not_fit_the_plans(tmp_path):
    """The checkpoint of a 4-feature-base network under plans that describe 8 features at the base."""
    plans = _plans(_arch())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    zpath, _ = write_v2_zip(tmp_path / "misfit.zip", plans=plans)
    with pytest.raises(UserError, match=r"the checkpoint does not fit its plans \(.*plans.json\): "
                                        r"'encoder.stages.0.0.convs.0.conv.weight' has shape \(4, 1, 1, 3, 3\), "
                                        r"the plans imply \(8, 1, 1, 3, 3\)$"):
        load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)
    # a network of another class under PlainConvUNet plans: missing keys
    resenc_ckpt = _checkpoint(_network(1, 3, resenc=True), plans, {})
    zpath, _ = write_v2_zip(tmp_path / "misfit2.zip", checkpoint=resenc_ckpt)
    with pytest.raises(UserError, match=r"does not fit its plans .* network PlainConvUNet\): it lacks '"):
        load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)


@pytest.mark.parametrize("name", ["os.system", "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer",
                                  "NoSuchUNet"])
def test_network_class_outside_dynamic_network_architectures_is_refused(tmp_path, name):
    arch = _arch()
    arch["network_class_name"] = name
    zpath, _ = write_v2_zip(tmp_path / "cls.zip", plans=_plans(arch))
    with pytest.raises(UserError, match=rf"network class '{name}' is not one of dynamic_network_architectures'"):
        load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)


def test_architecture_argument_outside_torch_nn_is_refused(tmp_path):
    arch = _arch()
    arch["arch_kwargs"]["nonlin"] = "os.system"
    zpath, _ = write_v2_zip(tmp_path / "kw.zip", plans=_plans(arch))
    with pytest.raises(UserError, match=r"architecture argument nonlin='os.system' is not a torch.nn class"):
        load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)


# ---- untrusted zips -----------------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_code_in_a_v2_checkpoint_is_refused_without_weights_only_advice(tmp_path):
    net = _network(1, 3)
    zpath, _ = write_v2_zip(tmp_path / "evil.zip", checkpoint=_checkpoint(net, {}, {}, extra=_Evil()))
    with pytest.raises(UserError) as e:
        load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)
    message = str(e.value)
    assert "checkpoint_final.pth: refused: the checkpoint holds posix.system" in message
    assert "weights_only" not in message and "\n" not in message


def test_traversal_member_in_a_v2_zip_is_refused(tmp_path, capsys):
    zpath, _ = write_v2_zip(tmp_path / "trav.zip", members=[("../../outside.txt", b"x")])
    assert main(["import-pretrained", "-i", str(zpath), "-d", "501"]) == 2
    assert "unsafe member path '../../outside.txt' (path traversal)" in capsys.readouterr().err


def _bomb_zip(path: Path, member: str, declared: int, small: dict[str, bytes]) -> None:
    """A zip written byte by byte: ``small`` stored as they are, and ``member`` a deflate stream of
    ``declared`` zero bytes made of one 1 MiB block repeated (a 3 GB member in ~3 MB). Its CRC is not
    computed (0): a reader finds out only after inflating everything."""
    block_size = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(block_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * (declared // block_size) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    entries = [(n, 0, d, zlib.crc32(d), len(d)) for n, d in small.items()] + [(member, 8, stream, 0, declared)]
    local, central = b"", b""
    for name, method, data, crc, size in entries:
        raw = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, 0, len(local)) + raw
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0) \
            + raw + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(local + central + end)


BOMB_RUN = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))    # GBs of memory are not available
from nnunet_vasculature.cli import main
args = ["import-pretrained", "-i", sys.argv[1], "-d", "501"]
main(args)                  # the first run imports torch and nnU-Net: the second one times the refusal itself
t = time.perf_counter()
code = main(args)
print(f"exit {code} after {time.perf_counter() - t:.3f} s")
"""


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_zip_bomb_is_refused_from_its_directory(tmp_path, layout):
    """Issue 28: a 3 MB zip whose checkpoint inflates to 3 GB, refused in well under a second with 1 GiB of
    memory allowed (inflating it first runs out of memory or takes a minute)."""
    if layout == "v2":
        small = {f"{MODEL_DIR}/plans.json": b"{}", f"{MODEL_DIR}/dataset.json": b"{}"}
        member = f"{MODEL_DIR}/fold_0/checkpoint_final.pth"
    else:
        member = "3d_fullres/Task008_HepaticVessel/nnUNetTrainerV2__nnUNetPlansv2.1/fold_0/model_final_checkpoint.model"
        meta = {"plans": {"plans_per_stage": {0: {}}, "num_classes": 2, "num_modalities": 1}, "init": ()}
        small = {member + ".pkl": pickle.dumps(meta)}
    (tmp_path / "raw" / "Dataset501_SenNet").mkdir(parents=True)     # the target exists: the source is the fault
    bomb = tmp_path / "bomb.zip"
    _bomb_zip(bomb, member, 3 * 10 ** 9, small)
    assert bomb.stat().st_size < 4 * 10 ** 6
    with zipfile.ZipFile(bomb) as zf:        # a well-formed zip: Python's reader lists the member and its size
        assert zf.getinfo(member).file_size == 3 * 10 ** 9
    r = subprocess.run([sys.executable, "-c", BOMB_RUN, str(bomb)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path)))
    last = r.stderr.strip().splitlines()[-1]
    assert "declares 3.0 GB from" in last and "refused without extracting (zip bomb?)" in last, r.stderr[-2000:]
    exit_line = r.stdout.strip().splitlines()[-1]
    assert exit_line.startswith("exit 2 after ") and float(exit_line.split()[-2]) < 0.5, r.stdout


# ---- input channels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source_channels,target_channels,resenc", [(1, 3, False), (2, 1, False), (1, 2, True)])
def test_stem_adapted_to_the_target_channels(tmp_path, source_channels, target_channels, resenc):
    """For an input equal in every channel, the adapted network gives the source's logits; every other
    tensor is the source's."""
    zpath, net = write_v2_zip(tmp_path / "m.zip", channels=[f"c{i}" for i in range(source_channels)], resenc=resenc)
    src = load_source(ModelFiles(zpath), "3d_fullres", "0", "checkpoint_final.pth", None, None)
    weights, adapted = adapt_input_channels(src, target_channels)
    assert adapted and all("stem" in k or "stages.0.0.convs.0" in k for k in adapted)
    target = build_network(src.architecture, target_channels, 3)
    target.load_state_dict(weights, strict=True)
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(3))
    ref = _logits(net, x.expand(1, source_channels, *PATCH))
    assert torch.allclose(_logits(target, x.expand(1, target_channels, *PATCH).contiguous()), ref, atol=1e-5)
    source_sd = net.state_dict()
    assert all(torch.equal(weights[k], source_sd[k]) for k in source_sd if k not in adapted)


@pytest.fixture(scope="module")
def sennet_target(tmp_path_factory, kaggle_small):
    """Converted SenNet dataset 501 (1 channel, labels background/vessel), planned by stock nnU-Net."""
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {k: root / k for k in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, d in dirs.items():
            d.mkdir()
            mp.setenv(f"nnUNet_{k}", str(d))
        assert main(["convert", "sennet", str(kaggle_small), "-d", "501", "--kidneys", "kidney_1_dense",
                     "kidney_2"]) == 0
        yield dirs, mp


def test_import_for_sennet_adapts_a_two_channel_source(tmp_path, sennet_target, capsys):
    dirs, _ = sennet_target
    zpath, _ = write_v2_zip(tmp_path / "Dataset008_HepaticVessel.zip", channels=("CT", "PET"))
    assert main(["import-pretrained", "-i", str(zpath), "-d", "501"]) == 0
    out = capsys.readouterr().out
    assert "input channels: the source takes 2, Dataset501_SenNet has 1: the stem " \
           "(encoder.stages.0.0.convs.0.conv.weight, " in out
    assert "_sourceHead starts from source classes 0 and 1 ('liver_vessels')" in out
    pre = dirs["preprocessed"] / "Dataset501_SenNet"
    plans = json.loads((pre / "nnUNetPlans_Dataset008_HepaticVessel.json").read_text())
    default = json.loads((pre / "nnUNetPlans.json").read_text())
    cfg, dcfg = plans["configurations"]["3d_fullres"], default["configurations"]["3d_fullres"]
    assert cfg["architecture"] == _arch() and cfg["patch_size"] == PATCH
    assert cfg["spacing"] == dcfg["spacing"] and cfg["normalization_schemes"] == dcfg["normalization_schemes"]
    saved = torch.load(pre / "nnUNetPlans_Dataset008_HepaticVessel__3d_fullres__pretrained.pth", weights_only=True)
    assert saved["head_channels"] == [0, 1] and saved["source_num_classes"] == 3
    assert saved["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].shape[1] == 1


def test_2d_source_for_a_3d_target_is_one_line(tmp_path, sennet_target, capsys):
    arch = _arch()
    kw = arch["arch_kwargs"]
    kw.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
              kernel_sizes=[k[1:] for k in KERNELS], strides=[s[1:] for s in STRIDES])
    plans = _plans(arch, patch=PATCH[1:])
    plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
    torch.manual_seed(0)
    net2d = PlainConvUNet(1, 3, FEATURES, nn.Conv2d, kw["kernel_sizes"], kw["strides"], [2, 2, 2], 3, [1, 1], True,
                          nn.InstanceNorm2d, {"eps": 1e-05, "affine": True}, None, None, nn.LeakyReLU,
                          {"inplace": True}, deep_supervision=True)
    d2 = MODEL_DIR.replace("3d_fullres", "2d")
    zpath, _ = write_v2_zip(tmp_path / "m2d.zip", plans=plans, model_dirs=(d2,),
                            checkpoint=_checkpoint(net2d, plans, {}))
    assert main(["import-pretrained", "-i", str(zpath), "-d", "501", "-c", "2d", "-tc", "3d_fullres"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a 2D source (2d) cannot start the 3D '3d_fullres' of Dataset501_SenNet" in err[0]


# ---- end to end: stock-trained source, stock training from it ---------------------------------------------
DUMP_TRAINER = '''
import os
import torch
from nnunet_vasculature.trainers.vessel_transfer import VesselTransferTrainer_demo


class VesselTransferTrainer_demo_dump(VesselTransferTrainer_demo):
    """VesselTransferTrainer_demo that saves the network's tensors as loaded, before the first step."""

    def on_train_start(self):
        super().on_train_start()
        torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, os.environ["DUMP_TO"])
'''


SOURCE_SPACING = [2.0, 1.0, 1.0]


def _run(cmd, env):
    r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _source_dataset(raw: Path, sennet_raw: Path) -> list[str]:
    """Dataset008_HepaticVessel in TotalSegmentator's labels (background, liver_vessels, liver_tumor) and CT
    channel, from the converted SenNet cases at a CT-like spacing: vessels kept, a block of background becomes
    tumour. Returns the case names."""
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO
    out = raw / "Dataset008_HepaticVessel"
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    io = Tiff3DIO()
    cases = sorted(p.name[:-len(".tif")] for p in (sennet_raw / "labelsTr").glob("*.tif"))
    for case in cases:
        (out / "imagesTr" / f"{case}_0000.tif").write_bytes((sennet_raw / "imagesTr" / f"{case}_0000.tif").read_bytes())
        (out / "imagesTr" / f"{case}.json").write_text(json.dumps({"spacing": SOURCE_SPACING}))
        seg, props = io.read_seg(str(sennet_raw / "labelsTr" / f"{case}.tif"))
        seg = seg[0].astype(np.uint8)
        z, y, x = (s // 4 for s in seg.shape)
        block = seg[z:2 * z, y:2 * y, x:2 * x]
        block[block == 0] = 2
        io.write_seg(seg, str(out / "labelsTr" / f"{case}.tif"), {**props, "spacing": SOURCE_SPACING})
    (out / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": TOTALSEG_LABELS, "numTraining": len(cases), "file_ending": ".tif",
        "overwrite_image_reader_writer": "Tiff3DIO"}))
    return cases


@pytest.mark.slow
def test_stock_trained_v2_source_starts_stock_training(tmp_path, nnunet_dirs, kaggle_small):
    from nnunet_vasculature.demo.cpu_plans import write_small_plans
    from nnunet_vasculature.trainers import ext_trainer_value
    from nnunet_vasculature.trainers.common import DEMO_ENV, VALIDATION_ENV
    bindir = Path(sys.executable).parent
    env = dict(os.environ, nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1", OMP_NUM_THREADS="1",
               **{DEMO_ENV: "1x2", VALIDATION_ENV: "0"})
    raw, pre, results = nnunet_dirs["raw"], nnunet_dirs["preprocessed"], nnunet_dirs["results"]
    _run([bindir / "nnunet-vasculature", "convert", "sennet", kaggle_small, "-d", "501", "--kidneys", "kidney_1_dense",
          "kidney_2", "kidney_5"], env)
    # 1. the source: trained by stock nnUNetv2_train, tiny plans, fold 0 of a written split
    cases = _source_dataset(raw, raw / "Dataset501_SenNet")
    _run([bindir / "nnUNetv2_plan_and_preprocess", "-d", "8", "-c", "3d_fullres", "-np", "1"], env)
    write_small_plans(pre / "Dataset008_HepaticVessel", "3d_fullres", source="nnUNetPlans", target="nnUNetPlans",
                      n_stages=3, max_features=8, patch=(16, 32, 32), batch_size=2)
    (pre / "Dataset008_HepaticVessel" / "splits_final.json").write_text(
        json.dumps([{"train": cases[:1], "val": cases[1:]}]))
    env["nnUNet_extTrainer"] = ext_trainer_value()
    _run([bindir / "nnUNetv2_train", "8", "3d_fullres", "0", "-tr", "nnUNetTrainer_demo", "-device", "cpu"], env)
    trained = results / "Dataset008_HepaticVessel" / "nnUNetTrainer_demo__nnUNetPlans__3d_fullres"
    assert not (trained / "fold_0" / "validation" / "summary.json").exists()   # why stock export cannot run
    # 2. TotalSegmentator's zip layout: the export's members (relative to nnUNet_results), trainer as released
    zpath = tmp_path / "Dataset008_HepaticVessel.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth",
                  "fold_0/progress.png", "fold_0/debug.json"):
            zf.write(trained / f, f"{MODEL_DIR}/{f}")
    source = torch.load(trained / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # 3. import for SenNet, preprocess, stock training with the transfer trainer
    out = _run([bindir / "nnunet-vasculature", "import-pretrained", "-i", zpath, "-d", "501"], env)
    plans_name = "nnUNetPlans_Dataset008_HepaticVessel"
    assert f"nnUNetv2_train 501 3d_fullres 0 -tr VesselTransferTrainer -p {plans_name}" in out
    target_pre = pre / "Dataset501_SenNet"
    plans = json.loads((target_pre / f"{plans_name}.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    src_cfg = json.loads((trained / "plans.json").read_text())["configurations"]["3d_fullres"]
    default = json.loads((target_pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    assert cfg["architecture"] == src_cfg["architecture"] and cfg["patch_size"] == [16, 32, 32]
    assert cfg["spacing"] == default["spacing"] != src_cfg["spacing"] == SOURCE_SPACING
    assert cfg["normalization_schemes"] == default["normalization_schemes"] != src_cfg["normalization_schemes"]
    _run([bindir / "nnUNetv2_preprocess", "-d", "501", "-plans_name", plans_name, "-c", "3d_fullres", "-np", "1"], env)
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "dump_trainers.py").write_text(DUMP_TRAINER)
    env["nnUNet_extTrainer"] = os.pathsep.join([ext_trainer_value(), str(ext)])
    env["DUMP_TO"] = str(tmp_path / "loaded.pth")
    env[DEMO_ENV] = "2x1"      # the transfer trainers' warm-up epoch needs a second epoch after it
    _run([bindir / "nnUNetv2_train", "501", "3d_fullres", "0", "-tr", "VesselTransferTrainer_demo_dump", "-p",
          plans_name, "-device", "cpu"], env)
    loaded = torch.load(tmp_path / "loaded.pth", weights_only=True)
    weights = source["network_weights"]
    assert loaded.keys() == weights.keys()
    head = [k for k in loaded if ".seg_layers." in k]
    assert head and all(loaded[k].shape[0] == 2 and weights[k].shape[0] == 3 for k in head)
    assert all(torch.equal(loaded[k], weights[k]) for k in loaded if k not in head)


# ---- archive caps and plans bounds (issue 35, items 11-13) ------------------------------------------------------
def _claimed_zip(path: Path, entries: list[tuple[str, bytes, int | None, int | None]]) -> Path:
    """A zip written byte by byte whose directory declares, for each (name, data, declared size, declared
    compressed size) entry, the sizes given (None: the data's own), so that a member can claim gigabytes at a
    plausible ratio without them existing; the data are stored as they are."""
    local, central = b"", b""
    for name, data, size, stored in entries:
        raw, crc = name.encode(), zlib.crc32(data)
        size, stored = len(data) if size is None else size, len(data) if stored is None else stored
        extra, small = b"", (size, stored)
        if size >= 0xFFFFFFFF or stored >= 0xFFFFFFFF:      # zip64: the sizes in an extra field
            extra, small = struct.pack("<HHQQ", 1, 16, size, stored), (0xFFFFFFFF, 0xFFFFFFFF)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, small[1], small[0],
                               len(raw), len(extra), 0, 0, 0, 0, len(local)) + raw + extra
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, small[1], small[0], len(raw),
                             len(extra)) + raw + extra + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


V1_MEMBER = "3d_fullres/Task008_HepaticVessel/nnUNetTrainerV2__nnUNetPlansv2.1/fold_{}/model_final_checkpoint.model"
V1_META = pickle.dumps({"plans": {"plans_per_stage": {0: {}}, "num_classes": 2, "num_modalities": 1}, "init": ()})


def test_a_v1_checkpoint_inflating_past_its_cap_is_refused_from_the_directory(tmp_path):
    """Item 11: a checkpoint declaring 2.6 GB from 42 MB (62:1, under the ratio check) was read (5.7 GB RSS);
    a v1 checkpoint is ~250-330 MB, so the cap for one is 1 GiB: refused naming the cap, nothing inflated."""
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    member = V1_MEMBER.format(0)
    bomb = _claimed_zip(tmp_path / "v1.zip", [(member + ".pkl", V1_META, None, None),
                                              (member, b"x", 2_600_000_000, 42_000_000)])
    with pytest.raises(UserError, match=r"model_final_checkpoint\.model declares 2\.6 GB, over the 1\.1 GB that such "
                                        r"a model file can be \(MAX_V1_CHECKPOINT_BYTES in .*\): refused without "
                                        r"extracting"):
        read_v1_model(bomb)


def test_members_together_over_the_total_cap_are_refused(tmp_path):
    """Several folds, each under its cap, together over the total: refused before any is read (the total cap
    lowered here: the default is MAX_TOTAL_BYTES)."""
    from nnunet_vasculature.pretrained.archive import ArchiveLimits
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    entries = [e for f in range(3) for e in ((V1_MEMBER.format(f) + ".pkl", V1_META, None, None),
                                             (V1_MEMBER.format(f), b"x", 600_000_000, 60_000_000))]
    zpath = _claimed_zip(tmp_path / "folds.zip", entries)
    with pytest.raises(UserError, match=r"declare 1\.8 GB together, over the 1\.1 GB a model needs \(MAX_TOTAL_BYTES"):
        read_v1_model(ModelFiles(zpath, ArchiveLimits(total_bytes=1 << 30)), folds=(0, 1, 2))


def test_a_v2_checkpoint_over_the_member_cap_is_refused(tmp_path):
    zpath = _claimed_zip(tmp_path / "v2.zip", [(f"{MODEL_DIR}/plans.json", b"{}", None, None),
                                               (f"{MODEL_DIR}/dataset.json", b"{}", None, None),
                                               (f"{MODEL_DIR}/fold_0/checkpoint_final.pth", b"x", 5 * 10 ** 9,
                                                10 ** 8)])
    with pytest.raises(UserError, match=r"checkpoint_final\.pth declares 5\.0 GB, over the 4\.3 GB .*MAX_MEMBER_BYTES"):
        read_v2_model(ModelFiles(zpath))


def _export_members(big: tuple[str, bytes, int | None, int | None]) -> list[tuple[str, bytes, int | None, int | None]]:
    """The members of an exported model zip (export-model's layout and record) with one more, ``big``."""
    from nnunet_vasculature.io.model_record import EXTRA_DIR, FORMAT, RECORD_FILE
    root = "Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres"
    record = json.dumps({"format": FORMAT, "plugin": {"name": "nnunet-vasculature", "version": "0.0.1"},
                         "model": {"folds": ["0"]}}).encode()
    return [(f"{root}/plans.json", b"{}", None, None), (f"{root}/{EXTRA_DIR}/{RECORD_FILE}", record, None, None),
            (f"{root}/{big[0]}", *big[1:])]


def test_the_model_installer_checks_sizes_as_the_import_does(tmp_path):
    """Item 12: the Kaggle script's install_model_zip extracted members with no size or ratio check (a 3.2 GB
    member filled the disk). It now uses the import's archive checks: a member declaring more than one model
    file can be, and a real, highly compressible member just over a lowered cap, are refused from the
    directory and nothing is installed."""
    from nnunet_vasculature.export.model_zip import install_model_zip
    results = tmp_path / "results"
    claimed = _claimed_zip(tmp_path / "claimed.zip",
                           _export_members(("fold_0/checkpoint_final.pth", b"x", 5 * 10 ** 9, 10 ** 8)))
    with pytest.raises(UserError, match=r"claimed\.zip: .*checkpoint_final\.pth declares 5\.0 GB, over the 4\.3 GB"):
        install_model_zip(claimed, results)
    from nnunet_vasculature.pretrained.archive import ArchiveLimits  # the caps a caller may lower
    compressible = tmp_path / "zeros.zip"
    with zipfile.ZipFile(compressible, "w", zipfile.ZIP_DEFLATED) as zf:      # a real deflated member
        for name, data, _, _ in _export_members(("fold_0/checkpoint_final.pth", bytes(600_000), None, None)):
            zf.writestr(name, data)
    with pytest.raises(UserError, match=r"declares 600\.0 KB, over the 524\.3 KB .*MAX_MEMBER_BYTES"):
        install_model_zip(compressible, results, limits=ArchiveLimits(member_bytes=512 * 1024))
    assert not results.exists() or not any(results.rglob("checkpoint_final.pth"))


@pytest.mark.parametrize("field,value,message", [
    ("features_per_stage", [4, 8, 4096], r"features_per_stage \[4, 8, 4096\] is not 1 to 16 integers in 1\.\.1024"),
    ("patch_size", [-32, 64, 64], r"patch_size \[-32, 64, 64\] is not 2 or 3 integers in 1\.\.2048"),
    ("batch_size", 1e12, r"batch_size 1000000000000\.0 is not an integer in 1\.\.1024"),
])
def test_plans_out_of_bounds_are_refused_before_the_network(tmp_path, field, value, message):
    """Item 13: features_per_stage 4096 built the network before any check (3 GB RSS), a negative patch or a
    1e12 batch went into the target plans with exit 0. Refused in one line naming the plans file, before the
    checkpoint is read."""
    plans = _plans(_arch())
    config = plans["configurations"]["3d_fullres"]
    (config["architecture"]["arch_kwargs"] if field == "features_per_stage" else config)[field] = value
    zpath, _ = write_v2_zip(tmp_path / "plans.zip", plans=plans)
    with pytest.raises(UserError, match=rf"^{zpath}:{MODEL_DIR}/plans\.json: '3d_fullres' {message}"):
        read_v2_model(ModelFiles(zpath))
