"""A study's plan: every option checked against the model before any weights load."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .backbones import Backbone, select_indices
from .maps.methods import MapMethod
from .metrics.faithfulness import check_faithfulness
from .scoring import ScoreOptions


@dataclass
class Plan:
    """A study's checked choices, resolved against the model before any weights load."""

    method: MapMethod
    layers: list[int]
    heads: list[int]
    scoring: ScoreOptions


def as_plain(value: Any) -> Any:
    """OmegaConf containers to plain Python; scalars stay scalars."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def build(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets our own one-line errors through unwrapped.

    Hydra wraps constructor errors in ``InstantiationException`` with a multi-line message;
    a ValueError or FileNotFoundError raised by our code is already the message the user needs.
    """
    from hydra.errors import InstantiationException

    try:
        return instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        raise


def name_from_choices(cfg: DictConfig, choices: Mapping[str, Any]) -> DictConfig:
    """Name the model and the data after the config chosen (``model=dino_vits8`` -> ``model.name``).

    The name is the config's file name, so no YAML repeats it; one set explicitly is kept.
    """
    with open_dict(cfg):
        for group in ("model", "data"):
            if cfg.get(group) is not None and not cfg[group].get("name") and choices.get(group):
                cfg[group].name = str(choices[group])
    return cfg


def _int_option(cfg: DictConfig, key: str, low: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key}={value}: expected an int >= {low}")
    return value


def plan_study(cfg: DictConfig, backbone: Backbone) -> Plan:
    """Check every option against the model; raise ValueError naming the option otherwise."""
    method: MapMethod = build(cfg.method, backbone=backbone)
    layers = select_indices(as_plain(cfg.layer), backbone.num_layers, "layer")
    heads = select_indices(as_plain(cfg.head), method.num_maps(), "head")
    _int_option(cfg, "batch_size", 1)
    loader_workers(cfg.num_workers, 1, 1)  # checks the option
    _int_option(cfg, "figures.max_images", 0)
    max_gb = OmegaConf.select(cfg, "cache.max_gb")
    if isinstance(max_gb, bool) or not isinstance(max_gb, (int, float)) or not max_gb > 0:
        raise ValueError(f"cache.max_gb={max_gb}: expected a size in GB > 0 (or cache.enabled=false)")
    if cfg.on_bad_image not in ("skip", "fail"):
        raise ValueError(f"on_bad_image={cfg.on_bad_image}: expected skip or fail")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={cfg.precision}: expected fp32, bf16 or fp16")
    if cfg.precision != "fp32" and resolve_device(cfg.device).type != "cuda":
        raise ValueError(f"precision={cfg.precision} needs a GPU (device=cuda or auto with CUDA); use precision=fp32")
    check_faithfulness(cfg, backbone)
    return Plan(method, layers, heads, ScoreOptions.from_config(cfg))


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible), ``cpu`` or ``cuda``; ValueError naming the option otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda: no CUDA device is visible; use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name}: expected auto, cpu or cuda")
    return torch.device(name)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, else the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(value: Any, images: int, batch_size: int) -> int:
    """``num_workers``: an int >= 0, or ``auto``: DataLoader worker processes preparing images (decoding,
    resizing, painting synthetic defects) beside the model when there is more than one core: one per core
    but one, at most 4, and no more than there are batches; 0 (in the study's process) on a single core.

    Raises:
        ValueError: naming the option and what it accepts.
    """
    if value == "auto":
        batches = -(-images // max(batch_size, 1))
        return max(0, min(usable_cores() - 1, 4, batches))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_workers={value}: expected an int >= 0 or auto")
    return value


def writer_threads() -> int:
    """Images written at once by the study's background writer: one, or a few on a many-core machine (a GPU
    study outruns one thread compressing saved maps)."""
    return max(1, min(4, usable_cores() // 4))


def build_dataset(cfg: DictConfig) -> Any:
    """Instantiate ``cfg.data`` (its ``name`` key is metadata, not an argument)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("name", None)
    return build(data)
