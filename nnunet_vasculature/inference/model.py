"""The one loader of trained nnU-Net models for every predictor of this package (the streaming 3D
predictor, the slide predictor and the dask workers).

What loading a model means here, once:

- the model folder is checked first (``plans.json``, ``dataset.json`` and every requested
  ``fold_F/checkpoint``): one line naming what is missing;
- the device is checked before any work (:func:`resolve_device`: ``-device cuda`` where CUDA is not
  available is one line, not a traceback halfway through);
- checkpoints are read weights-only (:func:`read_checkpoint`) by the package's one checkpoint reader
  (:func:`nnunet_vasculature.io.checkpoint.read_weights_only`, one allowlist for import, training and
  prediction); a checkpoint carrying anything else (e.g. an object whose unpickling would run code) is
  refused in one line and nothing of it runs;
- ``nnUNet_extTrainer`` gets this package's trainer folder, so that models trained with its trainers
  load (their network architecture is built by the trainer class, as stock nnU-Net does);
- the network of each fold is built with the checkpoint's weights and, with ``nnUNet_compile=1`` (stock
  nnU-Net's switch), compiled with ``torch.compile`` the way stock nnU-Net compiles its network;
- the two private nnU-Net calls the predictors need are made here only:
  ``nnUNetPredictor._internal_maybe_mirror_and_predict`` (nnU-Net's mirroring TTA, :meth:`LoadedModel.mirrored`)
  and ``DefaultPreprocessor._normalize`` (:func:`normalize_channels`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.io.model_record import read_record
from nnunet_vasculature.io.paths import nnunet_folder

if TYPE_CHECKING:      # torch and nnU-Net are imported when a model is loaded (`--help` starts without them)
    import numpy as np
    import torch

COMPILE_ENV = "nnUNet_compile"      # stock nnU-Net's switch: "1"/"true"/"t" compiles the network


def model_folder_from_args(dataset_id: str, configuration: str, trainer: str, plans: str) -> Path:
    """The model folder nnU-Net's ``-d -c -tr -p`` name.

    Args:
        dataset_id: dataset ID or name (``-d``).
        configuration: configuration (``-c``).
        trainer: trainer class name (``-tr``).
        plans: plans identifier (``-p``).

    Returns:
        ``$nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``, which holds a trained model
        (a one-line UserError naming the trained ones otherwise).
    """
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    results = nnunet_folder("nnUNet_results", "pass -m MODEL_FOLDER")
    try:
        folder = Path(get_output_folder(dataset_id, trainer, plans, configuration))
    except RuntimeError:
        raise UserError(f"dataset {dataset_id}: not found in nnUNet_raw, nnUNet_preprocessed or {results}") from None
    if not (folder / "plans.json").is_file():
        trained = sorted(p.name for p in folder.parent.glob("*__*__*") if (p / "plans.json").is_file()) \
            if folder.parent.is_dir() else []
        raise UserError(f"{folder}: no trained model for -tr {trainer} -p {plans} -c {configuration}; trained "
                        f"in {folder.parent.name}: {', '.join(trained) or 'none'}")
    return folder


def check_model_folder(folder: Path, folds: Sequence[int | str], checkpoint: str) -> None:
    """A one-line UserError unless ``folder`` holds plans.json, dataset.json and every ``fold_F/checkpoint``.

    Args:
        folder: the model folder.
        folds: the folds to use (``0``, ``1``, ..., ``"all"``).
        checkpoint: the checkpoint file name (``-chk``).
    """
    folder = Path(folder)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: not an nnU-Net model folder (no {name})")
    if not folds:
        raise UserError(f"{folder}: no folds given (-f)")
    for f in folds:
        if str(f) != "all" and not str(f).isdigit():
            raise UserError(f"-f {f}: a fold is a number or 'all'")
        if not (folder / f"fold_{f}" / checkpoint).is_file():
            present = sorted(p.parent.name for p in folder.glob(f"fold_*/{checkpoint}"))
            raise UserError(f"{folder}: no fold_{f}/{checkpoint} (present: {', '.join(present) or 'none'})")
    read_record(folder)          # an exported model: its record is well formed and asks no newer plugin than this


def resolve_device(name: str) -> torch.device:
    """The torch device ``-device NAME`` asks for, checked to exist here.

    Args:
        name: ``cuda``, ``cuda:N``, ``cpu`` or ``mps``.

    Returns:
        The device; a one-line UserError when this machine has no such device.
    """
    import torch
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"-device {name}: not a device (cuda, cpu or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"-device {name}: CUDA is not available here; pass -device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"-device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"-device {name}: MPS is not available here; pass -device cpu")
    elif device.type not in ("cuda", "cpu", "mps"):
        raise UserError(f"-device {name}: not supported (cuda, cpu or mps)")
    return device


def read_checkpoint(path: Path) -> dict:
    """A checkpoint written by nnU-Net's trainer, loaded weights-only.

    Args:
        path: ``fold_F/checkpoint_*.pth``.

    Returns:
        The checkpoint dict (``network_weights``, ``trainer_name``, ``init_args``, ...). A file that holds
        anything but tensors, plain values and numpy scalars is refused in one line without running any of
        it; so is an unreadable file or one without the keys prediction needs.
    """
    from nnunet_vasculature.io.checkpoint import read_weights_only
    path = Path(path)
    checkpoint = read_weights_only(path)
    need = {"network_weights": dict, "trainer_name": str, "init_args": dict}
    if not isinstance(checkpoint, dict) or any(not isinstance(checkpoint.get(k), t) for k, t in need.items()) \
            or not isinstance(checkpoint["init_args"].get("configuration"), str):
        raise UserError(f"{path}: not an nnU-Net checkpoint (needs network_weights, trainer_name, "
                        f"init_args.configuration)")
    return checkpoint


@dataclass
class LoadedModel:
    """A trained model ready to predict: one network per fold on ``device``, in eval mode (compiled with
    ``nnUNet_compile=1``), and nnU-Net's predictor holding the plans, configuration and label manager."""
    folder: Path
    device: torch.device
    predictor: Any                  # nnunetv2's nnUNetPredictor (its ``network`` is set per call)
    networks: list                  # torch.nn.Module per fold

    @property
    def plans_manager(self) -> Any:
        return self.predictor.plans_manager

    @property
    def configuration_manager(self) -> Any:
        return self.predictor.configuration_manager

    @property
    def label_manager(self) -> Any:
        return self.predictor.label_manager

    @property
    def dataset_json(self) -> dict:
        return self.predictor.dataset_json

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """The axes the trainer allows mirroring TTA along (model axes), or None."""
        return self.predictor.allowed_mirroring_axes

    def mirrored(self, network: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> logits`` of ``network`` with nnU-Net's mirroring TTA when the predictor's ``use_mirroring``.

        Args:
            network: one of :attr:`networks`.

        Returns:
            nnU-Net's ``_internal_maybe_mirror_and_predict`` run with ``network``.
        """
        def run(x: torch.Tensor) -> torch.Tensor:
            self.predictor.network = network
            return self.predictor._internal_maybe_mirror_and_predict(x)
        return run


def _compile_requested() -> bool:
    return os.environ.get(COMPILE_ENV, "").lower() in ("true", "1", "t")


def load_model(folder: Path, folds: Sequence[int | str], checkpoint: str, device: torch.device,
               use_mirroring: bool = True, tile_step_size: float = 0.5) -> LoadedModel:
    """Load a trained model for prediction (see the module's description for every step).

    Args:
        folder: the model folder (``plans.json``, ``dataset.json``, ``fold_F/``).
        folds: folds to average.
        checkpoint: checkpoint file name in each fold folder.
        device: where the networks run (from :func:`resolve_device`).
        use_mirroring: nnU-Net's mirroring TTA in :meth:`LoadedModel.mirrored`.
        tile_step_size: the predictor's sliding-window step (fraction of the patch).

    Returns:
        The loaded model.
    """
    import copy
    import inspect
    import json

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_vasculature.trainers import ext_trainer_value
    folder = Path(folder)
    check_model_folder(folder, folds, checkpoint)
    checkpoints = [read_checkpoint(folder / f"fold_{f}" / checkpoint) for f in folds]
    try:
        plans = json.loads((folder / "plans.json").read_text())
        dataset_json = json.loads((folder / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{folder}: plans.json or dataset.json is not readable JSON ({e})") from None
    first = checkpoints[0]
    trainer_name, configuration = first["trainer_name"], first["init_args"]["configuration"]
    plans_manager = PlansManager(plans)
    if configuration not in plans.get("configurations", {}):
        raise UserError(f"{folder}: the checkpoint's configuration '{configuration}' is not in plans.json")
    configuration_manager = plans_manager.get_configuration(configuration)
    os.environ["nnUNet_extTrainer"] = ext_trainer_value()      # models trained with our trainers load too
    try:
        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        raise UserError(f"{folder}: trainer {trainer_name} not found in nnU-Net or $nnUNet_extTrainer "
                        f"(install the package that defines it)") from None
    inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        plain = trainer_class.build_network_architecture(plans_manager, configuration_manager, inputs, outputs,
                                                         enable_deep_supervision=False)
    else:      # the signature of nnU-Net < 2.6, still accepted by stock nnU-Net
        plain = trainer_class.build_network_architecture(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, inputs, outputs,
            enable_deep_supervision=False)
    networks = []
    for f, ckpt in zip(folds, checkpoints):
        network = copy.deepcopy(plain)
        try:
            network.load_state_dict(ckpt["network_weights"])
        except RuntimeError as e:
            raise UserError(f"{folder / f'fold_{f}' / checkpoint}: weights do not fit the plans' network "
                            f"({str(e).splitlines()[0]})") from None
        network = network.to(device).eval()
        networks.append(_compile(network) if _compile_requested() else network)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    # the fold networks hold the weights: the predictor gets no parameter list (nothing of it that would
    # use one is called) and the first network (already compiled when asked, so not compiled again)
    predictor.manual_initialization(networks[0], plans_manager, configuration_manager, [], dataset_json,
                                    trainer_name, first.get("inference_allowed_mirroring_axes"))
    return LoadedModel(folder, device, predictor, networks)


def _compile(network: torch.nn.Module) -> torch.nn.Module:
    import torch
    return torch.compile(network)


def normalize_channels(data: np.ndarray, configuration_manager: Any, intensity_properties: dict) -> np.ndarray:
    """nnU-Net's preprocessing normalisation (``DefaultPreprocessor._normalize``) of (channels, z, y, x) data.

    Args:
        data: float32 image, channels first.
        configuration_manager: the model's configuration (normalisation schemes, ``use_mask_for_norm``).
        intensity_properties: the plans' ``foreground_intensity_properties_per_channel``.

    Returns:
        The normalised data (float32, same shape).
    """
    import numpy as np
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    seg = np.zeros((1,) + data.shape[1:], np.int8)
    return DefaultPreprocessor(verbose=False)._normalize(data, seg, configuration_manager, intensity_properties)


__all__ = ["COMPILE_ENV", "model_folder_from_args", "check_model_folder", "resolve_device", "read_checkpoint",
           "LoadedModel", "load_model", "normalize_channels"]
