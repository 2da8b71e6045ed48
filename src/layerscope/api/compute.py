"""``maps``: every requested layer's maps of images, one forward pass (and one backward) per batch."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..methods.registry import names as method_names
from ..methods.base import MapMethod
from ..config.schema import StudyConfig
from .inputs import Images, Layers, as_int, read_images, resolve_layers
from .layer_maps import Maps
from .models import _compose, _merged, wrap

Target = Union[int, Sequence[int], np.ndarray, torch.Tensor, Callable[[Any], torch.Tensor]]
"""What a gradient method explains: a class index, one per image, or a callable on the model's output
returning a (B,) score."""


def _method(backbone: Backbone, method: str | MapMethod, target: Target | None, options: Mapping[str, Any]
            ) -> MapMethod:
    """The map method: a config name (``conf/method/<name>.yaml``) with ``options``, or a MapMethod as it is."""
    from omegaconf import OmegaConf

    from ..methods.cam import GradientMethod, check_target
    from ..plan import build

    built: MapMethod
    if isinstance(method, MapMethod):
        if options:
            raise ValueError(f"options {sorted(options)} apply to a method given by name, not to a built one")
        built = method
    else:
        cfg = _compose([f"method={method}"])
        method_cfg = _merged(OmegaConf.to_container(cfg.method, resolve=True), options, "method")
        built = build(OmegaConf.create(method_cfg), backbone=backbone)
    if target is not None:
        if not isinstance(built, GradientMethod):
            raise ValueError(f"target= applies to gradient methods ({', '.join(method_names(needs_grad=True))}), "
                             f"not to method={built.name}")
        given: Any = target.tolist() if isinstance(target, (torch.Tensor, np.ndarray)) else target  # 0-d: a number
        chosen = [as_int(t) for t in given] if isinstance(given, (list, tuple)) else as_int(given)
        if isinstance(chosen, (list, tuple, int)):
            check_target(backbone, chosen, built.embedding_target)
        elif not callable(chosen):
            raise ValueError(f"target={chosen!r}: expected a class index, one per image, or a callable on the "
                             "model's output returning a (B,) score")
        built.target_class = chosen
    return built


def maps(backbone: Backbone | nn.Module, images: Images, layers: Layers = "all", method: str | MapMethod = "auto",
         target: Target | None = None, *, batch_size: int = StudyConfig.batch_size, references: Images | None = None,
         **options: Any) -> Maps:
    """Every requested layer's maps of ``images``, one forward pass (and one backward for gradient methods) per batch.

    The model runs in eval mode (no dropout; BatchNorm uses its running statistics and changes no buffer),
    and every module's own train/eval mode is put back afterwards. A model cast to another dtype
    (``.half()``, ``.bfloat16()``, ``.double()``) gets its input in that dtype; the maps are float32.

    Args:
        backbone: from ``load`` or ``wrap`` (a plain ``nn.Module`` is wrapped first).
        images: paths, PIL images, (H, W), (H, W, 3) or (H, W, 4) arrays, uint8, uint16 (divided by
            65535, as a 16-bit file or PIL image is) or floats in [0, 1] (resized to the model's side as a
            run does), or a float tensor (B, 3, S, S) taken as the model's already preprocessed input.
        layers: ``"all"``, an int (negative from the end), a module name, or a list of them.
        method: a method config name (``conf/method/<name>.yaml``; ``layerscope.methods.registry.names()`` lists
            them; ``patch_knn`` and its presets with ``references=``), or a built ``MapMethod``. Default: a run's,
            ``auto`` (``cls_attention`` on a ViT with a CLS token, ``features`` otherwise).
        target: gradient methods: a class index (NumPy and torch integers too), one per image, or a
            callable on the model's own output returning a (B,) score computed with torch operations
            (``lambda out: out[:, 3]``, pytorch-grad-cam's pattern; a transformers model's output is its
            ``ModelOutput``: ``lambda out: out.logits[:, 3]``); None explains each image's predicted class
            (or the embedding norm without a classifier). Not under ``torch.inference_mode()``.
        batch_size: images per forward pass (default: a run's, ``StudyConfig.batch_size``).
        references: normal images for ``patch_knn``'s memory bank (same kinds as ``images``).
        **options: the method's options (``reductions=["l2"]``, ``centred=True``, ``head_fusion="max"``).

    Returns:
        ``Maps``: per layer (B, K, h, w) float32; for attention the heads and their mean, as a run saves them.

    Raises:
        ValueError: one line naming the option, layer, image or target that does not fit (also: a method
            that reads the CLS token on a ViT without one; a gradient method under ``torch.inference_mode()``;
            a callable target whose score is detached).

    Example:
        >>> import torch, torchvision, layerscope as ls
        >>> bb = ls.wrap(torchvision.models.resnet18(), layers=["layer4"])
        >>> m = ls.maps(bb, torch.randn(2, 3, 224, 224), method="gradcam", target=lambda out: out[:, 281])
        >>> m["layer4"].shape
        (2, 1, 7, 7)
    """
    if not isinstance(backbone, Backbone):
        backbone = wrap(backbone)
    batch_size = as_int(batch_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
    built = _method(backbone, method, target, options)
    if built.needs_grad and torch.is_inference_mode_enabled():
        raise ValueError(f"method={built.name} needs gradients, which torch.inference_mode() forbids: call "
                         "layerscope.maps outside that block (under torch.no_grad() it works)")
    picked = resolve_layers(backbone, layers)
    rgb, xn, ids, sizes = read_images(backbone, images)
    with eval_mode(backbone):
        arrays, logits = _compute(backbone, built, picked, xn, batch_size, references)
    names = built.map_names() + (["mean"] if built.head_mean else [])
    return Maps(arrays, names, backbone, built, rgb, ids, logits, sizes)


@contextlib.contextmanager
def eval_mode(backbone: Backbone) -> Iterator[None]:
    """The backbone in eval mode (no dropout; BatchNorm reads its running statistics and updates none of its
    buffers) for the ``with`` block; every submodule's own mode is put back after, also after an exception."""
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _compute(backbone: Backbone, method: MapMethod, picked: list[int], xn: torch.Tensor, batch_size: int,
             references: Images | None) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """Every picked layer's maps of the normalised batch ``xn`` (B, 3, S, S), and the logits (B, C) or None."""
    from ..plan import Plan, chosen_maps

    device = backbone.mean.device
    capture = method.capture_layers(picked)
    if any(method.extra_map_names(layer) for layer in picked):
        raise ValueError(f"method={method.name} with fused layers (method.fuse) runs in studies (layerscope), "
                         "not in layerscope.maps: leave fuse out here")
    if method.needs_references:
        if references is None:
            raise ValueError(f"method={method.name} learns from defect-free images: give references=[...]")
        ref = read_images(backbone, references)[1]
        batches = (ref[i:i + batch_size].to(device) for i in range(0, len(ref), batch_size))
        method.fit(batches, picked, lambda x: backbone.extract(x, picked, method.capture, normalized=True))
    # chosen_maps reads the method and the maps kept, never the scoring options
    plan = Plan(method, picked, list(range(method.num_maps())), None)  # type: ignore[arg-type]
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in picked}
    logits_parts = []
    for start in range(0, len(xn), batch_size):
        x = xn[start:start + batch_size].to(device)
        if method.needs_grad:
            captured, logits = backbone.extract_grad(x, capture, method, normalized=True)
        else:
            captured, logits = backbone.extract(x, capture, method.capture, normalized=True)
        out = method.maps(captured)
        del captured
        chosen = chosen_maps(plan, {layer: out[layer].float().cpu() for layer in picked})
        for layer in picked:
            parts[layer].append(chosen[layer])
        if logits is not None:
            logits_parts.append(logits.float().cpu())
    arrays = {layer: torch.cat(parts[layer]).numpy() for layer in picked}
    return arrays, torch.cat(logits_parts).numpy() if logits_parts else None
