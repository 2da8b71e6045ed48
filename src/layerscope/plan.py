"""A study's plan: every option checked against the model before any weights load."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .backbones import Backbone, select_indices
from .data.base import Dataset, check_dataset
from .data.loading import loader_workers
from .methods.base import MapMethod
from .metrics.faithfulness import check_faithfulness
from .config.schema import StudyConfig, check_choice, typed
from .runtime import resolve_device
from .scoring import ScoreOptions


@dataclass
class Plan:
    """A study's checked choices, resolved against the model before any weights load."""

    method: MapMethod
    layers: list[int]
    heads: list[int]
    scoring: ScoreOptions
    extras: tuple[str, ...] = ()  # captured beside the maps in the same pass (Backbone.extra_hooks)


def build(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets our own one-line errors through unwrapped.

    Hydra wraps constructor errors in ``InstantiationException`` with a multi-line message;
    a ValueError, FileNotFoundError or WeightsError raised by our code is already the message the user needs.
    """
    from hydra.errors import InstantiationException

    from .backbones.weight_errors import WeightsError

    try:
        return instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError, WeightsError)):  # a config read at build time
            raise e.__cause__ from None
        raise


def _at_least(key: str, value: int, low: int) -> int:
    if value < low:
        raise ValueError(f"{key}={value}: expected an int >= {low}")
    return value


def plan_study(cfg: DictConfig | StudyConfig, backbone: Backbone) -> Plan:
    """Check every option against the model; raise ValueError naming the option otherwise.

    Args:
        cfg: the run's config (composed, or a saved ``config.yaml``), or its typed options.
    """
    opts = cfg if isinstance(cfg, StudyConfig) else typed(StudyConfig, cfg)
    method: MapMethod = build(OmegaConf.create(opts.method), backbone=backbone)
    layers = select_indices(opts.layer, backbone.num_layers, "layer")
    heads = select_indices(opts.head, method.num_maps(), "head")
    method.capture_layers(layers)  # checks what the method needs of the layers (patch_knn's method.fuse)
    _at_least("batch_size", opts.batch_size, 1)
    loader_workers(opts.num_workers, 1, 1)  # checks the option
    _at_least("figures.max_images", opts.figures.max_images, 0)
    _at_least("representation_grid", opts.representation_grid, 1)
    if not opts.cache.max_gb > 0:
        raise ValueError(f"cache.max_gb={opts.cache.max_gb:g}: expected a size in GB > 0 (or cache.enabled=false)")
    check_choice("on_bad_image", opts.on_bad_image)
    check_choice("precision", opts.precision)
    if opts.precision != "fp32" and resolve_device(opts.device).type != "cuda":
        raise ValueError(f"precision={opts.precision} needs a GPU (device=cuda or auto with CUDA); use precision=fp32")
    check_faithfulness(opts.metrics, backbone)
    from .sanity import check_sanity

    check_sanity(opts.metrics, backbone, method)  # metrics.road, metrics.randomisation
    scoring = ScoreOptions.of(opts.threshold, opts.threshold_rule, opts.upsample, opts.metrics)
    return Plan(method, layers, heads, scoring, plan_extras(opts, backbone, method))


def plan_extras(opts: StudyConfig, backbone: Backbone, method: MapMethod) -> tuple[str, ...]:
    """What the run captures beside the maps: pooled representations (``save_representations``) and,
    for ``cls_attention``, the mean attention distance per head (``metrics.attention_distance``, by
    ``metrics.attention_distance_rule``).

    Raises:
        ValueError: an unknown ``metrics.attention_distance_rule`` or ``metrics.attention_distance_unit``.
    """
    from .backbones.distance import EXTRAS, check_conventions

    rule = str(opts.metrics.attention_distance_rule)
    check_conventions(rule, str(opts.metrics.attention_distance_unit))
    extras: list[str] = []
    if opts.save_representations:
        extras += [f"rep_{kind}" for kind in backbone.representation_kinds]
    if opts.metrics.attention_distance and method.name == "cls_attention":
        extras.append(EXTRAS[rule])
    return tuple(extras)


def build_dataset(cfg: DictConfig) -> Dataset:
    """Instantiate ``cfg.data`` (its ``name`` key is metadata, not an argument).

    Raises:
        ValueError: the class built is not a ``data.base.Dataset`` (naming what it lacks).
    """
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("name", None)
    return check_dataset(build(data))


def chosen_maps(plan: Plan, maps: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The maps that get rows: the requested heads (or reductions), plus their mean where the method has one.

    Args:
        maps: layer -> (K_all, h, w) (or (B, K_all, h, w)).
    """
    out = {}
    k = plan.method.num_maps()
    for layer, layer_maps in maps.items():
        picked = layer_maps[..., plan.heads, :, :]
        if plan.method.head_mean:
            picked = torch.cat([picked, layer_maps[..., :k, :, :].mean(-3, keepdim=True)], -3)
        extra = layer_maps[..., k:, :, :]  # maps added beyond the K (extra_map_names): always kept
        out[layer] = torch.cat([picked, extra], -3) if extra.shape[-3] else picked
    return out
