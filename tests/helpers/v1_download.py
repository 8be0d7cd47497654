"""The nnU-Net v1 pretrained download as it was written on 2020-03-31, rebuilt from documented facts.

Nothing here uses the project's own v1 writer. The networks are the real v1 ``Generic_UNet``
(PyPI ``nnunet==1.7.1``) and the optimiser a real ``torch.optim.SGD`` that took steps; only the
serialisation is made to look like 2020 (DOMAIN.md section 5, Zenodo record 3734294):

- zip members start at the configuration folder (no ``nnUNet/`` prefix); ``2d``, ``3d_lowres``,
  ``3d_fullres`` and ``3d_cascade_fullres`` each with ``plans.pkl``, ``postprocessing.json`` and
  ``fold_0`` ... ``fold_4`` (``model_final_checkpoint.model``, ``.model.pkl``, ``debug.json``,
  ``progress.png``), plus ``ensembles/``;
- ``.model``: torch <= 1.4 legacy (non-zip) serialisation, pickle protocol 2, numpy globals under their
  numpy 1.x names (``numpy.core.multiarray.*``), SGD momentum buffers saved where they lived (the GPU),
  keys ``epoch``, ``state_dict``, ``optimizer_state_dict``, ``lr_scheduler_state_dict`` (None) and
  ``plot_stuff`` (four lists of numpy float64 scalars);
- ``.pkl``: pickle protocol 3 (Python 3.6/3.7's default), numpy 1.x names, numpy arrays and scalars,
  OrderedDict; plans v2.1 with two 3D stages (0 = 3d_lowres, 1 = 3d_fullres).

Every (configuration, fold) gets its own weights, so importing the wrong one fails a logit comparison.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

TASK = "Task008_HepaticVessel"
PLANS_ID = "nnUNetPlansv2.1"
TRAINER = "nnUNetTrainerV2"
CASCADE_TRAINER = "nnUNetTrainerV2CascadeFullRes"
NUM_CLASSES = 3          # background, vessel, tumour

# Both 3D stages share one layer structure (so a stage mix-up cannot show as a shape error, only in
# the logits) and differ in patch size and spacing, as Task008's lowres and fullres stages do.
POOL_3D = [[1, 2, 2], [2, 2, 2]]
CONV_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
POOL_2D = [[2, 2], [2, 2]]
CONV_2D = [[3, 3], [3, 3], [3, 3]]


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
def real_generic_unet(pool, conv, base: int, seed: int, num_input_channels: int = 1) -> nn.Module:
    """nnUNetTrainerV2's ``Generic_UNet`` as v1 instantiates it (identity final nonlinearity)."""
    from nnunet.network_architecture.generic_UNet import Generic_UNet
    from nnunet.network_architecture.initialization import InitWeights_He
    two_d = len(conv[0]) == 2
    torch.manual_seed(seed)
    net = Generic_UNet(num_input_channels, base, NUM_CLASSES, len(pool), 2, 2,
                       nn.Conv2d if two_d else nn.Conv3d, nn.InstanceNorm2d if two_d else nn.InstanceNorm3d,
                       {"eps": 1e-5, "affine": True}, nn.Dropout2d if two_d else nn.Dropout3d,
                       {"p": 0, "inplace": True}, nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True},
                       True, False, lambda x: x, InitWeights_He(1e-2), pool, conv, False, True, True)
    with torch.no_grad():   # non-trivial norms and biases: a wrong mapping cannot pass by accident
        for name, p in net.named_parameters():
            if "instnorm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return net


def _sgd_state(net: nn.Module, patch, channels: int) -> dict:
    """v1's optimiser (SGD, momentum 0.99, Nesterov) after two real steps: momentum buffers set."""
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
            "num_classes": NUM_CLASSES - 1, "all_classes": [1, 2], "base_num_features": base,
            "use_mask_for_norm": OrderedDict([(0, False)]), "keep_only_largest_region": None,
            "min_region_size_per_class": None, "min_size_per_class": None, "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "data_identifier": "nnUNetData_plans_v2.1",
            "plans_per_stage": {i: s for i, s in enumerate(stages)}, "preprocessor_name": "GenericPreprocessor",
            "conv_per_stage": 2}


def _progress_png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00" * 32      # content is never read


CONFIGURATIONS = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")


def write_task008_zip(path: Path, base: int = 8, folds=(0, 1, 2, 3, 4), pool=POOL_3D, conv=CONV_3D,
                      patch_lowres=(8, 16, 16), patch_fullres=(8, 24, 24), patch_2d=(24, 24),
                      configurations=CONFIGURATIONS, spacing_fullres=(1.5, 0.8, 0.8)) -> tuple[Path, dict]:
    """The 2020 download at toy size. Returns (zip, {(configuration, fold): real v1 network})."""
    pool, conv = [list(p) for p in pool], [list(c) for c in conv]
    plans3d = _plans([_stage(patch_lowres, pool, conv, [s * 1.6 for s in spacing_fullres], 2),
                      _stage(patch_fullres, pool, conv, list(spacing_fullres), 2)], base)
    plans2d = _plans([_stage(patch_2d, POOL_2D, CONV_2D, list(spacing_fullres), 12)], base)
    plans2d["plans_per_stage"][0]["current_spacing"] = np.array(spacing_fullres[1:])
    configs = {   # configuration -> (trainer, plans, stage, pool, conv, patch, input channels)
        "2d": (TRAINER, plans2d, 0, POOL_2D, CONV_2D, patch_2d, 1),
        "3d_lowres": (TRAINER, plans3d, 0, pool, conv, patch_lowres, 1),
        "3d_fullres": (TRAINER, plans3d, 1, pool, conv, patch_fullres, 1),
        # the cascade takes the image plus the one-hot lowres segmentation of the foreground classes
        "3d_cascade_fullres": (CASCADE_TRAINER, plans3d, 1, pool, conv, patch_fullres, NUM_CLASSES),
    }
    configs = {k: v for k, v in configs.items() if k in configurations}
    nets = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for ci, (config, (trainer, plans, stage, pool, conv, patch, ch)) in enumerate(configs.items()):
            base_dir = f"{config}/{TASK}/{trainer}__{PLANS_ID}"
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
                init = (f"/nnUNet_preprocessed/{TASK}/{PLANS_ID}_plans_3D.pkl", f, f"/out/{fold_dir}",
                        f"/nnUNet_preprocessed/{TASK}", True, stage, True, True, True)
                if trainer == CASCADE_TRAINER:
                    init = init[:8] + ("nnUNetTrainerV2", True)
                meta = {"init": init, "name": trainer,
                        "class": f"<class 'nnunet.training.network_training.{trainer}.{trainer}'>", "plans": plans}
                zf.writestr(f"{fold_dir}/model_final_checkpoint.model.pkl", _numpy1_dumps(meta, protocol=3))
                zf.writestr(f"{fold_dir}/debug.json", json.dumps({"fold": str(f), "stage": str(stage)}))
                zf.writestr(f"{fold_dir}/progress.png", _progress_png())
                nets[(config, f)] = net.eval()
        ens = f"ensembles/{TASK}/ensemble_2d__{TRAINER}__{PLANS_ID}--3d_fullres__{TRAINER}__{PLANS_ID}"
        zf.writestr(f"{ens}/postprocessing.json", json.dumps({"for_which_classes": [], "min_valid_object_sizes": {}}))
    return Path(path), nets
