"""A source model (nnU-Net v1 or v2) as the network description and weights the transfer trainers start from.

- The network is described by its plans (``architecture``: class name, keyword arguments) and built with
  nnU-Net's own ``get_network_from_plans``. A plans file is untrusted input naming Python objects, so
  only network classes of ``dynamic_network_architectures`` (PlainConvUNet, ResidualEncoderUNet, ...: the
  ones nnU-Net and its ResEnc presets build from plans) and this package's V1CompatibleUNet are accepted,
  and their keyword classes only from ``torch.nn``; anything else is refused by name before it is imported.
- The checkpoint must fit its plans key for key and shape for shape (one line naming the first misfit).
- Input channels: when the target has another number of channels than the source, the stem's kernels
  (the tensors whose input-channel axis changes; dynamic_network_architectures calls them
  ``keys_to_in_proj``) are summed over the source channels and spread evenly over the target channels:
  one source channel repeated (divided by their number) over several target channels, several averaged
  into one (summed). For an input equal in every channel the stem then responds exactly as the source's
  did. Stock nnU-Net has no such step (``-pretrained_weights`` requires equal shapes).
"""
from __future__ import annotations

import pydoc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nnunet_vasculature.errors import UserError
from nnunet_vasculature.pretrained.archive import ModelFiles

if TYPE_CHECKING:
    from torch import nn

ALLOWED_NETWORK_PREFIX = "dynamic_network_architectures.architectures."
V1_NETWORK = "nnunet_vasculature.pretrained.network.V1CompatibleUNet"
HEAD_KEY = ".seg_layers."             # nnU-Net's marker of the segmentation head (skipped by -pretrained_weights)


@dataclass
class SourceNetwork:
    """What every source gives the import: the network and the facts the target plans keep."""
    kind: str                         # "v1" or "v2"
    name: str                         # Task008_HepaticVessel, Dataset008_HepaticVessel, ...
    architecture: dict                # nnU-Net v2 plans ``architecture`` entry (class name resolved)
    patch_size: list[int]
    batch_size: int
    num_input_channels: int
    num_heads: int                    # output channels of the head
    head_names: list[str] | None      # label name of each head channel (None: region-based or unknown)
    weights: dict                     # state dict of the network built from ``architecture``
    description: dict = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return len(self.patch_size)


def _locate_class(name: str, where: str, what: str) -> type:
    import torch
    cls = pydoc.locate(name)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise UserError(f"{where}: {what} '{name}' is not a torch.nn.Module class")
    return cls


def resolve_architecture(architecture: dict, where: str) -> dict:
    """The ``architecture`` entry of plans with its network class checked and its name resolved.

    Args:
        architecture: ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``.
        where: the plans file, for messages.

    Returns:
        A copy whose ``network_class_name`` is the full module path of the class (nnU-Net's fallback,
        a bare class name found in dynamic_network_architectures, is resolved here).
    """
    try:
        class_name = str(architecture["network_class_name"])
        kwargs = dict(architecture["arch_kwargs"])
        imports = [str(k) for k in architecture.get("_kw_requires_import", [])]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: the plans' architecture entry lacks network_class_name/arch_kwargs") from None
    if class_name != V1_NETWORK:
        if "." not in class_name:
            class_name = _find_in_dynamic_network_architectures(class_name, where)
        if not class_name.startswith(ALLOWED_NETWORK_PREFIX):
            raise UserError(f"{where}: network class '{class_name}' is not one of dynamic_network_architectures' "
                            f"(PlainConvUNet, ResidualEncoderUNet, ...): only networks nnU-Net builds from plans can "
                            f"be imported")
        if pydoc.locate(class_name) is None:
            class_name = _find_in_dynamic_network_architectures(class_name.rsplit(".", 1)[-1], where)
    cls = _locate_class(class_name, where, "network class")
    for key in imports:
        value = kwargs.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith("torch.nn."):
            raise UserError(f"{where}: architecture argument {key}={value!r} is not a torch.nn class")
        _locate_class(value, where, f"architecture argument {key}")
    return {"network_class_name": f"{cls.__module__}.{cls.__qualname__}", "arch_kwargs": kwargs,
            "_kw_requires_import": imports}


def _find_in_dynamic_network_architectures(short_name: str, where: str) -> str:
    """nnU-Net's fallback for a class that moved: search dynamic_network_architectures.architectures."""
    from os.path import join

    import dynamic_network_architectures
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    cls = recursive_find_python_class(join(dynamic_network_architectures.__path__[0], "architectures"),
                                      short_name, "dynamic_network_architectures.architectures")
    if cls is None:
        raise UserError(f"{where}: network class '{short_name}' is not one of dynamic_network_architectures' "
                        f"(PlainConvUNet, ResidualEncoderUNet, ...): only networks nnU-Net builds from plans can "
                        f"be imported")
    return f"{cls.__module__}.{cls.__qualname__}"


def build_network(architecture: dict, input_channels: int, num_heads: int,
                  deep_supervision: bool = True) -> "nn.Module":
    """The network an (already resolved) ``architecture`` describes, built by nnU-Net.

    Args:
        architecture: from :func:`resolve_architecture`.
        input_channels: input channels.
        num_heads: output channels.
        deep_supervision: as nnU-Net trains (the state dict's keys do not depend on it).

    Returns:
        The network (nnU-Net's initialisation).
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], input_channels, num_heads,
                                  allow_init=True, deep_supervision=deep_supervision)


def fit_checkpoint(network: "nn.Module", weights: dict, where: str, plans_where: str) -> dict:
    """``weights`` loaded into ``network`` after checking that they fit it key for key.

    Args:
        network: built from the checkpoint's own plans.
        weights: the checkpoint's ``network_weights``.
        where: the checkpoint, for messages.
        plans_where: its plans file, for messages.

    Returns:
        The network's state dict (every alias key included) holding the checkpoint's tensors.
    """
    own = network.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        first = f"lacks '{missing[0]}'" if missing else f"has '{extra[0]}'"
        raise UserError(f"{where}: the checkpoint does not fit its plans ({plans_where}, network "
                        f"{type(network).__name__}): it {first} ({len(missing)} missing, {len(extra)} unexpected "
                        f"keys)")
    for key, value in own.items():
        if tuple(weights[key].shape) != tuple(value.shape):
            raise UserError(f"{where}: the checkpoint does not fit its plans ({plans_where}): '{key}' has shape "
                            f"{tuple(weights[key].shape)}, the plans imply {tuple(value.shape)}")
    network.load_state_dict(weights, strict=True)
    return network.state_dict()


def adapt_input_channels(source: SourceNetwork, target_channels: int) -> tuple[dict, list[str]]:
    """The source's state dict for a network taking ``target_channels`` inputs (head unchanged).

    Args:
        source: the source network.
        target_channels: input channels of the target dataset.

    Returns:
        (state dict, keys whose tensors were adapted: empty when the channel numbers agree).
    """
    if target_channels == source.num_input_channels:
        return {k: v.detach().cpu().clone() for k, v in source.weights.items()}, []
    target = build_network(source.architecture, target_channels, source.num_heads).state_dict()
    out, adapted = {}, []
    for key, value in target.items():
        src = source.weights[key]
        if src.shape == value.shape:
            out[key] = src.detach().cpu().clone()
            continue
        if src.dim() < 3 or src.shape[0] != value.shape[0] or src.shape[2:] != value.shape[2:] \
                or src.shape[1] != source.num_input_channels:
            raise UserError(f"'{key}' has shape {tuple(src.shape)} in the source and {tuple(value.shape)} for "
                            f"{target_channels} input channels: not an input projection")
        summed = src.detach().cpu().float().sum(dim=1, keepdim=True) / target_channels
        out[key] = summed.repeat(1, target_channels, *([1] * (src.dim() - 2))).to(src.dtype).contiguous()
        adapted.append(key)
    return out, adapted


def load_source(files: ModelFiles, configuration: str, fold: str, checkpoint: str, trainer: str | None,
                plans: str | None) -> SourceNetwork:
    """The v1 or v2 model in ``files``, as a :class:`SourceNetwork`.

    Args:
        files: the source's files.
        configuration: ``-c``.
        fold: ``-f``.
        checkpoint: ``-chk`` (v2 only).
        trainer: ``-tr``.
        plans: ``-p``.

    Returns:
        The source network with its weights.
    """
    from nnunet_vasculature.pretrained.v1_checkpoint import find_v1_models
    from nnunet_vasculature.pretrained.v2_model import find_v2_models
    if find_v1_models(files):
        return _load_v1(files, configuration, fold, trainer, plans)
    if find_v2_models(files):
        return _load_v2(files, configuration, fold, checkpoint, trainer, plans)
    raise UserError(f"{files.path}: neither an nnU-Net v1 model (<config>/TaskXXX_*/<trainer>__<plans>/fold_N/"
                    f"model_final_checkpoint.model) nor a v2 model ([DatasetXXX_Name/]TRAINER__PLANS__CONFIGURATION/"
                    f"fold_N/checkpoint_final.pth) inside")


def _load_v1(files: ModelFiles, configuration: str, fold: str, trainer: str | None, plans: str | None
             ) -> SourceNetwork:
    from nnunet_vasculature.pretrained.convert import convert_v1_model
    from nnunet_vasculature.pretrained.v1_checkpoint import read_v1_model
    model = read_v1_model(files, configuration, (fold,), trainer=trainer, plans=plans)
    net, arch = convert_v1_model(model)
    labels = ["background", "vessel", "tumour"] if model.task.startswith("Task008") else \
        [f"class {i}" for i in range(model.num_classes)]
    return SourceNetwork(
        "v1", model.task, arch, [int(p) for p in model.stage_plans["patch_size"]],
        int(model.stage_plans.get("batch_size", 2)), model.num_input_channels, model.num_classes,
        labels if labels and len(labels) == model.num_classes else None,
        {k: v.detach().cpu() for k, v in net.state_dict().items()},
        {"task": model.task, "v1_trainer": model.trainer, "v1_stage": model.stage,
         "v1_spacing": [float(s) for s in model.stage_plans.get("current_spacing", [])]})


def _load_v2(files: ModelFiles, configuration: str, fold: str, checkpoint: str, trainer: str | None,
             plans: str | None) -> SourceNetwork:
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_vasculature.pretrained.v2_model import read_v2_model
    model = read_v2_model(files, configuration, fold, checkpoint, trainer, plans)
    folder = f"{model.dataset + '/' if model.dataset else ''}{model.trainer}__{model.plans_identifier}__" \
             f"{model.configuration}"
    plans_where = f"{files.path}:{folder}/plans.json"
    try:
        manager = PlansManager(model.plans)
        config = manager.get_configuration(model.configuration)
        arch = config.configuration["architecture"]
        labels = manager.get_label_manager(model.dataset_json)
        channels = determine_num_input_channels(manager, config, model.dataset_json)
        patch = [int(p) for p in config.patch_size]
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - nnU-Net raises KeyError/RuntimeError/AssertionError on bad plans
        raise UserError(f"{plans_where}: not usable nnU-Net plans for '{model.configuration}' with its "
                        f"dataset.json ({type(e).__name__}: {_first_line(e)})") from None
    if config.previous_stage_name is not None:
        raise UserError(f"{plans_where}: '{model.configuration}' is a cascade stage (it takes the "
                        f"{config.previous_stage_name} segmentation as extra input channels) and cannot start a "
                        f"single-stage model; use 3d_fullres or 3d_lowres")
    arch = resolve_architecture(arch, plans_where)
    heads = labels.num_segmentation_heads
    try:
        net = build_network(arch, channels, heads)
    except Exception as e:  # noqa: BLE001 - a class of dynamic_network_architectures refusing its arguments
        raise UserError(f"{plans_where}: cannot build {arch['network_class_name'].rsplit('.', 1)[-1]} from the "
                        f"plans ({type(e).__name__}: {_first_line(e)})") from None
    weights = fit_checkpoint(net, model.network_weights, f"{files.path}:{folder}/fold_{fold}/{checkpoint}",
                             plans_where)
    names = None
    if not labels.has_regions:
        by_value = {int(v): str(k) for k, v in model.dataset_json.get("labels", {}).items()}
        names = [by_value.get(i, str(i)) for i in range(heads)]
    return SourceNetwork(
        "v2", model.dataset, arch, patch, int(config.batch_size), channels, heads, names, weights,
        {"dataset": model.dataset, "v2_trainer": model.trainer, "v2_plans": model.plans_identifier,
         "checkpoint": checkpoint, "checkpoint_trainer_name": model.trainer_name,
         "v2_spacing": [float(s) for s in config.spacing]})


def _first_line(e: BaseException) -> str:
    lines = str(e).splitlines()
    return lines[0][:160] if lines else ""


def head_channels(source: SourceNetwork, vessel_channel: int | None) -> tuple[list[int], str]:
    """The source head channels a 2-class head starts from with ``_sourceHead`` (background, vessel).

    Args:
        source: the source network.
        vessel_channel: ``--vessel_channel`` (None: the one label whose name contains "vessel", else 1).

    Returns:
        ([background channel, vessel channel], a sentence for the log); ``[]`` where the source head has
        no such channels (region-based heads): the trainer then keeps its random head.
    """
    if source.head_names is None:
        if vessel_channel is not None:
            raise UserError(f"--vessel_channel {vessel_channel}: the source head is region-based (sigmoid per "
                            f"region, no background channel); _sourceHead cannot start from it")
        return [], "source head is region-based: _sourceHead starts from a random head"
    if vessel_channel is None:
        vessel = [i for i, n in enumerate(source.head_names) if "vessel" in n.lower() and i > 0]
        if len(vessel) == 1:
            return [0, vessel[0]], (f"_sourceHead starts from source classes 0 and {vessel[0]} "
                                    f"('{source.head_names[vessel[0]]}')")
        vessel_channel = 1
        note = " (no single label named *vessel*: pass --vessel_channel to choose)"
    else:
        note = ""
    if not 0 < vessel_channel < source.num_heads:
        raise UserError(f"--vessel_channel {vessel_channel}: the source model has classes 0..{source.num_heads - 1}")
    return [0, vessel_channel], (f"_sourceHead starts from source classes 0 and {vessel_channel} "
                                 f"('{source.head_names[vessel_channel]}'){note}")


__all__ = ["SourceNetwork", "adapt_input_channels", "build_network", "fit_checkpoint", "head_channels",
           "load_source", "resolve_architecture"]
