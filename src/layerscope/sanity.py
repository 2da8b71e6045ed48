"""The model-dependent sanity and faithfulness columns of a batch: ROAD / AOPC (``metrics.road``) and
model-parameter randomisation / Random Logit (``metrics.randomisation``), for every requested layer at once.

The metrics themselves are in ``metrics.road`` and ``metrics.randomisation``; this module runs the model
for them, as ``mapsource.faithfulness`` does for deletion and insertion.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from .backbones import Backbone
from .methods.methods import MapMethod


def method_maps(backbone: Backbone, method: MapMethod, x: torch.Tensor, layers: Sequence[int]
                ) -> dict[int, torch.Tensor]:
    """Every layer's maps of ``method`` with the model as it is now: one forward (and one backward) pass.

    Args:
        x: RGB in [0, 1], (B, 3, S, S), on the model's device.

    Returns:
        layer -> (B, K_all, h, w) float32, on the model's device.
    """
    layers = list(layers)
    if method.needs_grad:
        captured, _ = backbone.extract_grad(x, method.capture_layers(layers), method)
    else:
        captured, _ = backbone.extract(x, method.capture_layers(layers), method.capture)
    maps = method.maps(captured)
    return {layer: maps[layer].float() for layer in layers}


def check_sanity(metrics, backbone: Backbone, method: MapMethod) -> None:
    """Check ``metrics.road``, ``metrics.road_noise``, ``metrics.randomisation``, ``metrics.randomisation_seeding``
    and ``metrics.random_logit_rule`` against the model and method before any weights load.

    Raises:
        ValueError: one line naming the option.
    """
    from .metrics.randomisation import LOGIT_RULES, MODES, SEEDINGS

    if metrics.road and not backbone.num_classes:
        raise ValueError(f"metrics.road needs a model with a classifier; model {backbone.name} has none "
                         "(use metrics.road=false)")
    if metrics.road_noise < 0:
        raise ValueError(f"metrics.road_noise={metrics.road_noise:g}: expected a standard deviation >= 0")
    if metrics.randomisation not in MODES:
        raise ValueError(f"metrics.randomisation={metrics.randomisation}: expected one of {', '.join(MODES)}")
    seeding = getattr(metrics, "randomisation_seeding", "per_module")  # a saved config from before the option
    if seeding not in SEEDINGS:
        raise ValueError(f"metrics.randomisation_seeding={seeding}: expected one of {', '.join(SEEDINGS)}")
    rule = getattr(metrics, "random_logit_rule", "image")  # a saved config from before the option: its default
    if rule not in LOGIT_RULES:
        raise ValueError(f"metrics.random_logit_rule={rule}: expected one of {', '.join(LOGIT_RULES)}")
    if metrics.randomisation != "none" and method.needs_references:
        raise ValueError(f"metrics.randomisation={metrics.randomisation} does not apply to method={method.name}: "
                         "its maps come from a memory bank fitted with the trained weights")


@torch.no_grad()
def road_columns(backbone: Backbone, x: torch.Tensor, maps: dict[int, torch.Tensor], target: torch.Tensor,
                 batch_size: int = 16, noise: float = 0.01, tie_orders: int = 4, seed: int = 0
                 ) -> dict[int, dict[str, torch.Tensor]]:
    """``road_morf``, ``road_lerf`` and ``aopc`` of every map of every layer (``metrics.road``).

    Costs ``2 x 9`` imputations and forwards per map and image (plus the extra tie orders); the imputed
    images are built in RGB (the noise is in RGB units) and normalised by the model.

    Args:
        backbone: a model with a classifier.
        x: RGB in [0, 1], (B, 3, S, S).
        maps: layer -> (B, K, h, w) chosen maps.
        target: (B,) class per image.

    Returns:
        layer -> column -> (B, K) float32 on the CPU.
    """
    from .metrics.road import road

    device = backbone.mean.device
    x = x.to(device)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return backbone.logits(backbone.normalize(images))

    out = {}
    for layer, m in maps.items():
        v = road(forward, x, m.to(device), target.to(device), batch_size=batch_size, noise=noise,
                 tie_orders=tie_orders, seed=seed).cpu()
        out[layer] = {"road_morf": v[..., 0], "road_lerf": v[..., 1], "aopc": v[..., 2]}
    return out


def randomisation_columns(backbone: Backbone, method: MapMethod, x: torch.Tensor, maps: dict[int, torch.Tensor],
                          choose: Callable[[dict[int, torch.Tensor]], dict[int, torch.Tensor]], mode: str,
                          target: torch.Tensor | None = None, seed: int = 0, logit_rule: str = "image",
                          seeding: str = "per_module") -> dict[int, dict[str, torch.Tensor]]:
    """``mprt_spearman`` and ``mprt_ssim`` (full randomisation for ``cascading``; the layer's own block for
    ``independent``) and, for gradient methods of a classifier, ``random_logit_ssim``, of every chosen map.

    Args:
        backbone: the model, in eval mode (its weights are restored exactly on return).
        method: the run's map method.
        x: RGB in [0, 1], (B, 3, S, S).
        maps: layer -> (B, K, h, w) the trained model's chosen maps.
        choose: all maps of a layer -> the chosen ones (``plan.chosen_maps``), as the trained maps were chosen.
        mode: ``cascading`` or ``independent``.
        target: (B,) the class each map explains (Random Logit draws another); None skips Random Logit.
        seed: randomisation seed (and the other classes' draw).
        logit_rule: how ``random_logit_ssim`` compares the two maps (``metrics.random_logit_rule``: ``image`` or
            ``quantus``; ``metrics.randomisation.logit_similarity``).
        seeding: how the re-initialisation is seeded (``metrics.randomisation_seeding``: ``per_module`` or ``once``;
            ``metrics.randomisation.randomised``).

    Returns:
        layer -> column -> (B, K) float32 on the CPU.
    """
    from .metrics.randomisation import logit_similarity, other_classes, randomised_maps, similarities

    device = backbone.mean.device
    x = x.to(device)
    layers = list(maps)
    names = backbone.layer_names()

    def compute(which: list[int]) -> dict[int, torch.Tensor]:
        return choose(method_maps(backbone, method, x, which))

    randomised = randomised_maps(backbone, compute, layers, mode,
                                 blocks=lambda layer: backbone.model.get_submodule(names[layer]), seed=seed,
                                 seeding=seeding)
    out = {}
    for layer in layers:
        rho, s = similarities(maps[layer].to(device), randomised[layer])
        out[layer] = {"mprt_spearman": rho.float().cpu(), "mprt_ssim": s.float().cpu()}
    if target is not None and method.needs_grad and backbone.num_classes > 1:
        other = copy.copy(method)
        other.target_class = other_classes(target, backbone.num_classes, seed).to(device)
        flipped = choose(method_maps(backbone, other, x, layers))
        for layer in layers:
            out[layer]["random_logit_ssim"] = logit_similarity(maps[layer].to(device), flipped[layer],
                                                               logit_rule).float().cpu()
    return out


def batch_columns(cfg, plan, backbone: Backbone, items: list[dict], per_image: list[dict[int, torch.Tensor]],
                  logits: list[torch.Tensor | None], faith: list[dict | None],
                  choose: Callable[[dict[int, torch.Tensor]], dict[int, torch.Tensor]]) -> list[dict | None]:
    """A study batch's ``metrics.road`` and ``metrics.randomisation`` columns merged into its per-image
    faithfulness columns (``faith``, returned unchanged when neither is asked for).

    Args:
        cfg: the run's options (``metrics.*``, ``batch_size``, ``seed``).
        plan: the run's plan (its method).
        per_image: per image, layer -> (K_all, h, w) maps; ``choose`` picks the rows' maps from them.
        logits: per image (C,) logits or None.
        faith: per image, layer -> column -> (K,), or None.

    Returns:
        Per image, layer -> column -> (K,) values, or None.
    """
    metrics = cfg.metrics
    if not metrics.road and metrics.randomisation == "none":
        return faith
    x = torch.stack([item.x for item in items]).to(backbone.mean.device)
    chosen = [choose(m) for m in per_image]
    maps = {layer: torch.stack([c[layer] for c in chosen]) for layer in chosen[0]}
    target_class = getattr(plan.method, "target_class", None)
    target = None
    if target_class is not None:
        target = torch.full((len(items),), int(target_class))
    elif all(lg is not None for lg in logits):
        target = torch.stack([lg.argmax(-1) for lg in logits])
    columns: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in maps}
    if metrics.road:
        for layer, cols in road_columns(backbone, x, maps, target, int(cfg.batch_size) * 4, float(metrics.road_noise),
                                        int(metrics.faithfulness_tie_orders), int(cfg.seed)).items():
            columns[layer].update(cols)
    if metrics.randomisation != "none":
        # choose (plan.chosen_maps) picks from (B, K_all, h, w) as from (K_all, h, w)
        for layer, cols in randomisation_columns(backbone, plan.method, x, maps, choose, metrics.randomisation,
                                                 target, int(cfg.seed), str(metrics.random_logit_rule),
                                                 str(metrics.randomisation_seeding)).items():
            columns[layer].update(cols)
    out = []
    for i, f in enumerate(faith):
        merged = {layer: dict((f or {}).get(layer, {})) for layer in maps}
        for layer, cols in columns.items():
            merged[layer].update({c: v[i] for c, v in cols.items()})
        out.append(merged)
    return out
