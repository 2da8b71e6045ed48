"""``load`` (a model by config name) and ``wrap`` (an existing model object): the API's backbones."""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..backbones import Backbone
from ..config.schema import StudyConfig

def _compose(overrides: Sequence[str]) -> Any:
    """The run's config with ``overrides`` (``model=...``, ``method=...``), names set from the choices."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import open_dict

    from ..config.compose import name_from_choices
    from ..config.paths import config_dir

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except MissingConfigException as e:
        wanted = str(e).splitlines()[0].split("Could not find '", 1)[-1].rstrip("'")
        group, _, value = wanted.rpartition("/")
        raise ValueError(f"{group}={value}: no such config; available: {', '.join(e.options or [])}") from None
    name_from_choices(cfg, cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _merged(base: dict[str, Any], changes: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``base`` with ``changes`` merged in (nested dicts key by key); an unknown key is a ValueError."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if key not in out:
            raise ValueError(f"{what}.{key}: no such option (options: {', '.join(k for k in out if k != '_target_')})")
        if isinstance(out[key], dict) and isinstance(value, Mapping) and key != "model_kwargs":
            out[key] = _merged(out[key], value, f"{what}.{key}")
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def load(name: str, *, seed: int = StudyConfig.seed, device: str | torch.device | None = None,
         **overrides: Any) -> Backbone:
    """A model by config name (``conf/model/<name>.yaml``), weights loaded, in eval mode.

    Args:
        name: ``"dinov2_vits14_bundled"``, ``"dino_vits8"``, ``"timm"`` (with ``arch=``), ``"hf"``
            (with ``hub_id=``), ...
        seed: seeds a random-init model's weights as a run with ``seed=`` does (the caller's RNG
            state is left as it was).
        device: where to put it (``"cuda"``, ``"cuda:1"``, ``"mps"``); None leaves it on the CPU. A device
            this machine does not have is a ValueError before anything is built.
        **overrides: ``model.*`` options as keywords: ``img_size=224``, ``pretrained=False``,
            ``weights={"source": "file", "path": "ckpt.pth"}``, ``arch="resnet18"``.

    Returns:
        The backbone: ``num_layers``, ``layer_names()``, ``img_size``, ``labels``, ...

    Raises:
        ValueError: an unknown config or option, a value the model does not take, a device this machine
            lacks, or ``weights=`` naming a file with ``pretrained=False`` (it would be ignored) (one line).
        WeightsError: weights that cannot be found or read (the message says what to do).

    Example:
        >>> import layerscope as ls
        >>> bb = ls.load("tiny_cnn", img_size=96)
        >>> bb.kind, bb.num_layers, bb.img_size
        ('cnn', 5, 96)
    """
    from omegaconf import OmegaConf

    from ..plan import build

    device = _device(device)
    cfg = _compose([f"model={name}"])
    model_cfg = _merged(OmegaConf.to_container(cfg.model, resolve=True), overrides, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # as a run: seed, then build (random-init weights match the run's)
        backbone: Backbone = build(OmegaConf.create(model_cfg))
    backbone.load_weights()
    backbone.eval()
    backbone.config = model_cfg
    return backbone.to(device) if device is not None else backbone


def _device(device: Any) -> torch.device | None:
    """``device=`` as a torch device that exists on this machine (None stays None).

    Raises:
        ValueError: one line: not a device name, or a CUDA/MPS device this machine does not have.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r}: not a torch device; expected 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"device={device!r}: {'no CUDA device is' if not seen else f'only {seen} CUDA device(s) are'} "
                         "visible on this machine; use device='cpu' (or leave it unset)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r}: no MPS device is available on this machine; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: layerscope runs on 'cpu', 'cuda' or 'mps', not {dev.type}")
    return dev


def wrap(model: nn.Module, *, layers: Sequence[str] | str | None = None, img_size: int | None = None,
         mean: Sequence[float] | None = None, std: Sequence[float] | None = None, name: str | None = None,
         num_prefix: int | None = None) -> Backbone:
    """An existing model object as a layerscope backbone, its weights as they are (put in eval mode).

    - a timm ``VisionTransformer``: every block is a layer; all methods (attention, features, CAMs);
    - a timm CNN: the stages of its ``feature_info`` are the layers;
    - a transformers vision model with standard q/k self-attention (``ViTModel``,
      ``ViTForImageClassification``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``DeiTModel``, ...):
      every layer of its encoder, all methods;
    - any ``nn.Module`` with ``layers=`` module names (``["layer3", "layer4"]``, ``["blocks.11.norm1"]``):
      their outputs, feature maps ``(B, C, h, w)`` or tokens ``(B, N, C)``, serve ``features`` and the CAM
      methods (attention methods say they cannot read it). ``layers=`` also works on the models above.

    Args:
        model: the model.
        layers: module names to use as layers (required for a model of none of the kinds above).
        img_size: input side; default: timm's ``pretrained_cfg``, a transformers image processor
            config on this machine, else the config's ``image_size``; 224 for other modules.
        mean, std: RGB normalisation; default from the same configs, else ImageNet's.
        name: the model's name in results (default: its architecture or class).
        num_prefix: leading non-patch tokens of token outputs with ``layers=`` (default: inferred).

    Raises:
        ValueError: one line: a model layerscope cannot read without ``layers`` (a timm ``features_only``
            model, a timm transformer that is not a ``VisionTransformer`` such as EVA-02 or BEiT), an unknown
            module name (the closest names are listed), a layer output that is not a map, an ``img_size``
            that is not a positive int, a ``std`` with a value <= 0.

    Example:
        >>> import torch, torchvision, layerscope as ls
        >>> bb = ls.wrap(torchvision.models.resnet18(), layers=["layer3", "layer4"])
        >>> bb.layer_names(), bb.num_classes
        (['layer3', 'layer4'], 1000)
    """
    from ..backbones.adopt import wrap_model

    return wrap_model(model, layers, img_size, mean, std, name, num_prefix)
