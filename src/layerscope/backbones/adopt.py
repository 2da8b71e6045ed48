"""Backbones for models layerscope has no config for: any timm name, any transformers ViT, any module.

``wrap_model`` adopts a model object as it is (``layerscope.wrap``); ``timm_backbone`` and
``hf_backbone`` build one from a name (``model=timm model.arch=...``, ``model=hf model.hub_id=...``).
Preprocessing (input side, mean, std) comes from the model's own config unless given.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .base import Backbone
from .cnn import TimmCNN
from .generic import ModuleBackbone
from .vit import HFViT, TimmViT
from .weights import WeightsError, hub_file

log = logging.getLogger(__name__)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
Preprocessing = tuple[int | None, tuple[float, ...] | None, tuple[float, ...] | None]


def _is_timm_vit(model: nn.Module) -> bool:
    """A timm ``VisionTransformer`` whose blocks expose q/k norms (where the CLS rows are read)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer) and hasattr(model.blocks[0].attn, "q_norm")


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg")


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """(side, mean, std) of a timm model's ``pretrained_cfg`` (its ``input_size``, ``mean``, ``std``); a ViT's
    side is the one its patch embedding was built for."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    side = int(built[-1]) if built is not None else int(cfg["input_size"][-1])
    return side, tuple(cfg["mean"]), tuple(cfg["std"])


def _read_processor(path: Path | None) -> Preprocessing:
    """(side, mean, std) from a transformers ``preprocessor_config.json`` (Nones where it says nothing)."""
    if path is None or not Path(path).is_file():
        return None, None, None
    cfg = json.loads(Path(path).read_text())
    size = cfg.get("crop_size") if cfg.get("do_center_crop") else cfg.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    return (int(size) if isinstance(size, (int, float)) else None,
            tuple(mean) if mean else None, tuple(std) if std else None)


def hf_preprocessing(model: nn.Module) -> Preprocessing:
    """(side, mean, std) of a transformers model: its image processor config when one is on this machine
    (the model's folder or the hub cache; never downloaded), else ``config.image_size`` and ImageNet's."""
    where = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    found = None
    if where and (Path(where) / "preprocessor_config.json").is_file():
        found = Path(where) / "preprocessor_config.json"
    elif where:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(where, "preprocessor_config.json")
            found = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - not a repo id: no processor config
            found = None
    side, mean, std = _read_processor(found)
    if mean is None or std is None:
        log.info("%s: no image processor config on this machine; ImageNet mean/std assumed (give mean=, std=)",
                 type(model).__name__)
    return side or int(getattr(model.config, "image_size", 224)), mean or IMAGENET[0], std or IMAGENET[1]


def side_of(value: Any, key: str) -> int:
    """An input side in pixels: a positive int (a NumPy integer, or a float with no fraction, is taken).

    Raises:
        ValueError: ``key=value: expected a positive int (pixels)``.
    """
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value) or value < 1:
        raise ValueError(f"{key}={value!r}: expected a positive int (pixels)")
    return int(value)


def rgb_triple(value: Any, key: str, positive: bool = False) -> tuple[float, ...]:
    """Three finite numbers (R, G, B) for ``mean`` or ``std`` (``positive``: each > 0, as a divisor must be).

    Raises:
        ValueError: one line naming ``key`` and what it expects.
    """
    import math

    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        what = "3 positive numbers" if positive else "3 finite numbers"
        raise ValueError(f"{key}={value!r}: expected {what} (R, G, B)")
    return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def wrap_model(model: nn.Module, layers: Sequence[str] | str | None = None, img_size: int | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None, name: str | None = None,
               num_prefix: int | None = None) -> Backbone:
    """A backbone around an existing model object, its weights as they are (see ``layerscope.wrap``).

    Raises:
        ValueError: one line: a model layerscope cannot read without ``layers``, an unknown module
            name, a layer output that is not a map.
    """
    if isinstance(model, Backbone):
        if any(v is not None for v in (layers, img_size, mean, std, name, num_prefix)):
            raise ValueError(f"wrap: {model.name} is already a layerscope backbone; wrap its .model to change "
                             "layers, img_size, mean or std")
        return model
    if not isinstance(model, nn.Module):
        raise ValueError(f"wrap: expected a torch.nn.Module, got {type(model).__name__}")
    if _is_timm(model):
        own = timm_preprocessing(model)
        name = name or model.pretrained_cfg.get("architecture") or type(model).__name__
    elif hasattr(model, "config") and hasattr(model, "base_model"):
        own = hf_preprocessing(model)
        name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    else:
        own = (224, *IMAGENET)
        name = name or type(model).__name__
    size = side_of(img_size, "img_size") if img_size is not None else own[0]
    mean = rgb_triple(mean, "mean") if mean is not None else own[1]
    std = rgb_triple(std, "std", positive=True) if std is not None else own[2]
    device = _device_of(model)
    if layers is not None:
        bb = ModuleBackbone(model, layers, str(name), size, mean, std, num_prefix).to(device)
        bb.probe()
        return bb
    if _is_timm_vit(model):
        return TimmViT.from_model(model, str(name), size, mean, std).to(device)
    if HFViT.readable(model):
        if img_size is None and size % _hf_patch(model):
            size = max(size // _hf_patch(model), 1) * _hf_patch(model)  # a processor's side the patches do not tile
        return HFViT.from_model(model, str(name), size, mean, std).to(device)
    if _is_timm(model) and getattr(model, "feature_info", None):
        if not hasattr(model, "num_classes"):
            raise ValueError(_FEATURES_ONLY.format(what=f"a {type(model).__name__}"))
        return TimmCNN.from_model(model, str(name), size, mean, std).to(device)
    top = [n for n, _ in model.named_children()][:8]
    raise ValueError(f"wrap: layerscope cannot find the layers of a {type(model).__name__} by itself; give layers="
                     f"[module names] (its top-level modules: {', '.join(top) or 'none'})")


_FEATURES_ONLY = ("wrap: {what} is a timm features_only=True model: it returns its stages' outputs, not the "
                  "network layerscope reads; create the model without features_only (layerscope hooks the stages "
                  "itself), or give layers=[module names]")


def _hf_patch(model: nn.Module) -> int:
    patch = model.config.patch_size
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def timm_backbone(name: str | None, arch: str | None, img_size: int | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None, pretrained: bool = True,
                  weights: Mapping[str, Any] | None = None, num_classes: int | None = None,
                  model_kwargs: Mapping[str, Any] | None = None) -> Backbone:
    """Any timm model by name (``model=timm model.arch=vit_base_patch16_clip_224.openai``).

    A ``VisionTransformer`` becomes a ``TimmViT`` (attention methods work), any other model with
    timm's ``feature_info`` a ``TimmCNN``. Input side, mean and std default to the model's
    ``pretrained_cfg``; weights come from the hub tag ``arch`` unless ``weights`` says otherwise.

    Raises:
        ValueError: no ``arch``, an unknown one, or a model that is neither.
    """
    import timm

    if not arch:
        raise ValueError("model=timm needs model.arch=<a timm model name>, e.g. model.arch=vit_base_patch16_clip_224.openai "
                         "(timm.list_models() lists them)")
    if not timm.is_model(str(arch).split(".")[0]):
        raise ValueError(f"model.arch={arch}: timm has no such model (timm.list_models('*part*') lists names)")
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    try:
        with torch.device("meta"):  # the class and pretrained_cfg, without allocating weights
            probe = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - a model whose constructor computes on its tensors
        probe = timm.create_model(arch, pretrained=False, **kwargs)
    if not hasattr(probe, "num_classes"):
        raise ValueError(f"model.arch={arch}: model.model_kwargs.features_only=true gives a {type(probe).__name__}, "
                         "which returns its stages' outputs, not the network; drop features_only (layerscope hooks "
                         "the stages itself)")
    side, own_mean, own_std = timm_preprocessing(probe)
    size = side_of(img_size, "model.img_size") if img_size is not None else side
    mean = rgb_triple(mean, "model.mean") if mean is not None else own_mean
    std = rgb_triple(std, "model.std", positive=True) if std is not None else own_std
    w = dict(weights or {})
    w.setdefault("source", "hub")
    w["hub_id"] = w.get("hub_id") or arch
    name = str(arch) if name in (None, "", "timm") else name
    kwargs.pop("num_classes", None)
    classes = int(probe.num_classes)
    if _is_timm_vit(probe):
        return TimmViT(name, arch, size, mean, std, pretrained, w, num_classes=classes, model_kwargs=kwargs)
    if getattr(probe, "feature_info", None):
        return TimmCNN(name, arch, size, mean, std, pretrained, w, num_classes=classes, model_kwargs=kwargs)
    raise ValueError(f"model.arch={arch}: a {type(probe).__name__} is neither a timm ViT whose attention layerscope "
                     "reads nor a model with timm feature_info; from Python, layerscope.wrap(model, layers=[...]) "
                     "takes any module")


def hf_backbone(name: str | None, hub_id: str | None, img_size: int | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                pretrained: bool = True) -> HFViT:
    """A transformers ViT by hub id or local folder (``model=hf model.hub_id=facebook/dino-vits8``).

    The network is built from the repo's ``config.json`` (its ``architectures`` class, random init),
    so options are checked before weights load; ``load_weights`` then reads the repo's weights.
    Input side, mean and std default to the repo's ``preprocessor_config.json``.

    Raises:
        ValueError: no ``hub_id``, or a model without q/k self-attention layers.
        WeightsError: the config is neither cached nor downloadable.
    """
    import transformers

    if not hub_id:
        raise ValueError("model=hf needs model.hub_id=<a Hugging Face model id or a local model folder>, e.g. "
                         "model.hub_id=facebook/dino-vits8")
    name = str(hub_id).rstrip("/").split("/")[-1] if name in (None, "", "hf") else name
    local = Path(str(hub_id)).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"model.hub_id={hub_id}: the folder holds no config.json")
        folder, weights = local, {"source": "file", "path": str(local)}
    else:
        try:
            folder = hub_file(str(hub_id), "config.json", name).parent
        except WeightsError as e:
            reason = str(e).split(". Ways out", 1)[0]
            raise WeightsError(f"model.hub_id={hub_id}: {reason.split(': ', 1)[-1]}. Ways out: connect once so the hub "
                               "cache fills (HF_HOME), or give a local model folder as save_pretrained writes it "
                               "(model.hub_id=/path/to/folder)") from None
        weights = {"source": "hub", "hub_id": str(hub_id)}
    config = transformers.AutoConfig.from_pretrained(str(folder))
    cls = next((getattr(transformers, a) for a in (config.architectures or []) if hasattr(transformers, a)), None)
    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    processor = folder / "preprocessor_config.json"
    if not processor.is_file() and weights["source"] == "hub":
        try:
            processor = hub_file(str(hub_id), "preprocessor_config.json", name)
        except WeightsError:
            processor = None
    side, own_mean, own_std = _read_processor(processor)
    size = side_of(img_size, "model.img_size") if img_size is not None else \
        (side or int(getattr(config, "image_size", 224)))
    mean = rgb_triple(mean, "model.mean") if mean is not None else own_mean or IMAGENET[0]
    std = rgb_triple(std, "model.std", positive=True) if std is not None else own_std or IMAGENET[1]
    return HFViT.from_model(model, name, size, mean, std, pretrained=pretrained, weights=weights)
