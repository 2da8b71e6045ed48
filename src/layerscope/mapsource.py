"""Where a batch's maps come from: the map cache where every image is there, else one backbone pass."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backbones import Backbone
from .methods.base import MapMethod
from .runtime import one_thread
from .config.schema import CacheOptions
from .data.handover import Item
from .plan import Plan
from .results.cache import MapCache, image_key


def autocast(device: torch.device, precision: str):
    """fp32 (no autocast), or bf16/fp16 autocast on CUDA; maps are computed in fp32 either way."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, S, S) float in [0, 1] -> (S, S, 3) uint8 (exact for inputs made from uint8 images)."""
    return (x.permute(1, 2, 0).numpy() * 255).round().astype("uint8")


def build_cache(options: CacheOptions, method: MapMethod, key: str) -> MapCache | None:
    """The map cache for this run, or None (disabled, or a method that learns from other images).

    Args:
        options: the run's ``cache.*`` options.
        method: the run's map method.
        key: what the maps depend on (``results.cache.config_key`` of the model, the method and the seed).
    """
    if not options.enabled or method.needs_references:
        return None
    from .backbones.bundled import cache_dir

    root = Path(options.dir).expanduser() if options.dir else cache_dir() / "maps"
    return MapCache(root, key, float(options.max_gb))


class MapSource:
    """Maps for a batch: from the map cache where every image is there, else from one backbone pass.

    Args:
        keep_on_device: return the maps on ``device`` (a GPU: the study scores them there), not on the CPU.

    Attributes:
        calls: backbone passes made; seconds: time spent in them (forward + maps).
    """

    def __init__(self, backbone: Backbone, plan: Plan, device: torch.device, precision: str,
                 cache: MapCache | None, keep_on_device: bool = False):
        self.backbone, self.plan, self.device, self.precision, self.cache = backbone, plan, device, precision, cache
        self.keep_on_device = keep_on_device and device.type != "cpu"
        self.calls, self.seconds = 0, 0.0

    def __call__(self, items: list[Item]) -> tuple[list[dict[int, torch.Tensor]], list[torch.Tensor | None]]:
        """Per image: layer -> (K, h, w) float32 maps (on the CPU, or on the device with ``keep_on_device``),
        and its logits (C,) on the CPU, or None."""
        maps, logits, _ = self.fetch(items)
        return maps, logits

    def fetch(self, items: list[Item], images_u8: Sequence[np.ndarray | None] | None = None
              ) -> tuple[list[dict[int, torch.Tensor]], list[torch.Tensor | None],
                         list[dict[str, dict[int, torch.Tensor]]]]:
        """As ``__call__``, plus per image the plan's extras on the CPU (name -> layer -> tensor: ``rep_<kind>``
        (D,), ``attention_distance`` (H,)), captured in the same pass.

        Args:
            images_u8: per item its image as uint8 (``to_uint8``: what the cache's key hashes), where the caller
                has it (None: converted here).
        """
        layers, extras = self.plan.layers, tuple(getattr(self.plan, "extras", ()))
        given = images_u8 if images_u8 is not None else [None] * len(items)
        keys = [image_key(u if u is not None else to_uint8(item.x)) for item, u in zip(items, given)] \
            if self.cache else [None] * len(items)
        found = [self.cache.get_all(k, layers, extras) if self.cache else None for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            with one_thread():  # a copy of a few MB: a second OpenMP thread on a busy core stalls it for ms
                x = torch.stack([items[i].x for i in missing]).to(self.device, non_blocking=True)
            t0 = time.perf_counter()
            with autocast(self.device, self.precision), self.backbone.capturing(layers, extras) as got:
                method = self.plan.method
                if method.needs_grad:  # one forward + one backward for every layer, with autograd on
                    captured, logits = self.backbone.extract_grad(x, method.capture_layers(layers), method)
                else:
                    captured, logits = self.backbone.extract(x, method.capture_layers(layers), method.capture)
                maps = method.maps(captured)
                del captured
            if lost := [f"{name} of layer {layer}" for name in extras for layer in layers if layer not in got[name]]:
                raise RuntimeError(f"model {self.backbone.name}: {', '.join(lost)} not captured in the forward pass")
            maps = {layer: maps[layer].float() if self.keep_on_device else maps[layer].float().cpu()
                    for layer in layers}
            logits = logits.float().cpu() if logits is not None else None
            extra = {name: {layer: got[name][layer].float().cpu() for layer in layers} for name in extras}
            if self.keep_on_device:
                torch.cuda.synchronize(self.device)  # the time is the device's work, not its queueing
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            for j, i in enumerate(missing):
                found[i] = ({layer: m[j] for layer, m in maps.items()}, logits[j] if logits is not None else None,
                            {name: {layer: t[j] for layer, t in per.items()} for name, per in extra.items()})
                if self.cache:
                    self.cache.put(keys[i], {layer: m.cpu() for layer, m in found[i][0].items()}, found[i][1],
                                   found[i][2])
        if self.keep_on_device:  # cached images come from disk
            found = [({layer: m.to(self.device) for layer, m in f[0].items()}, f[1], f[2]) for f in found]
        return [f[0] for f in found], [f[1] for f in found], [f[2] for f in found]


@torch.no_grad()
def faithfulness(backbone: Backbone, x: torch.Tensor, maps: dict[int, torch.Tensor], target: torch.Tensor,
                 steps: int = 10, baseline: str = "blur", batch_size: int = 16, tie_orders: int = 4,
                 seed: int = 0) -> dict[int, torch.Tensor]:
    """Deletion and insertion AUC of every map of every layer of a batch (``metrics.faithfulness``).

    Costs ``2 + 2 K (steps - 1)`` forward passes per image and layer (K maps), in batches of
    ``batch_size``; the perturbed images are built in RGB and normalised by the model.

    Args:
        backbone: a model with a classifier, on the device of ``x``.
        x: RGB in [0, 1], (B, 3, S, S), as the map source gets it.
        maps: layer -> (B, K, h, w) maps on the layer's grid (e.g. the chosen heads and the mean).
        target: (B,) class per image: the predicted class (``logits.argmax(-1)``) or the method's
            ``target_class``.
        steps: ``metrics.faithfulness_steps``.
        baseline: ``metrics.faithfulness_baseline``: ``blur`` or ``mean``.
        batch_size: perturbed images per forward pass.
        tie_orders, seed: ``metrics.faithfulness_tie_orders`` random orders among equal cells, from ``seed``.

    Returns:
        layer -> (B, K, 2) float32 on the CPU: [..., 0] ``deletion_auc``, [..., 1] ``insertion_auc``.

    Raises:
        ValueError: a model without a classifier ("metrics.faithfulness needs a model with a classifier").
    """
    from .metrics.faithfulness import deletion_insertion

    if not backbone.num_classes:
        raise ValueError(f"metrics.faithfulness needs a model with a classifier; model {backbone.name} has none "
                         "(use metrics.faithfulness=false)")
    device = backbone.mean.device
    x = x.to(device)

    dtype = backbone.model_dtype()  # a model the user cast (.half(), .double()) takes its input in its dtype

    def forward(images: torch.Tensor) -> torch.Tensor:
        return backbone.logits(backbone.normalize(images).to(dtype))

    return {layer: deletion_insertion(forward, x, m.to(device), target.to(device), steps, baseline, batch_size,
                                      tie_orders=tie_orders, seed=seed)
            for layer, m in maps.items()}
