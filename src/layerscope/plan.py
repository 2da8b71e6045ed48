"""A study's plan: every option checked against the model before any weights load."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .backbones import Backbone, select_indices
from .configs import config_dir
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
    extras: tuple[str, ...] = ()  # captured beside the maps in the same pass (Backbone.extra_hooks)


def as_plain(value: Any) -> Any:
    """OmegaConf containers to plain Python; scalars stay scalars."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def build(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets our own one-line errors through unwrapped.

    Hydra wraps constructor errors in ``InstantiationException`` with a multi-line message;
    a ValueError, FileNotFoundError or WeightsError raised by our code is already the message the user needs.
    """
    from hydra.errors import InstantiationException

    from .backbones.errors import WeightsError

    try:
        return instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, FileNotFoundError, WeightsError)):  # a config read at build time
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


TRUE, FALSE = ("true", "yes", "on"), ("false", "no", "off")  # YAML 1.1 spellings, any case
GROUPS_WITHOUT_DEFAULTS = ("experiment",)  # groups that change other options (``@package _global_``)
_ABSENT = object()


def _conf_dir() -> Path:
    return Path(config_dir())


def _bool_leaves(node: Any, prefix: str) -> Iterable[tuple[str, bool]]:
    """(dotted key, whether its default is a bool) for every leaf of a loaded YAML mapping."""
    for key, value in (node.items() if isinstance(node, dict) else ()):
        if key in ("defaults", "hydra") or not isinstance(key, str):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _bool_leaves(value, f"{path}.")
        elif value is not None:
            yield path, isinstance(value, bool)


@functools.lru_cache(maxsize=4)
def bool_options(conf_dir: Path | None = None) -> tuple[str, ...]:
    """Every boolean option: the keys whose default is true or false in ``config.yaml`` and in the
    configs of each group (``model.pretrained``, ``data.recursive``, ...), read from the YAML files
    themselves so that a new boolean option is checked without being listed anywhere.
    """
    conf = Path(conf_dir) if conf_dir is not None else _conf_dir()
    kinds: dict[str, set[bool]] = {}
    files = [(conf / "config.yaml", "")]
    files += [(f, f"{group.name}.") for group in sorted(conf.iterdir())
              if group.is_dir() and group.name not in GROUPS_WITHOUT_DEFAULTS for f in sorted(group.rglob("*.yaml"))]
    for path, prefix in files:
        for key, is_bool in _bool_leaves(OmegaConf.to_container(OmegaConf.load(path)), prefix):
            kinds.setdefault(key, set()).add(is_bool)
    return tuple(sorted(key for key, seen in kinds.items() if seen == {True}))


def as_bool(key: str, value: Any) -> bool:
    """A boolean option's value: true/false, or the YAML spellings yes/no, on/off (any case).

    Raises:
        ValueError: anything else (``save_maps=maybe``, ``1``, null), naming the option.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"{key}={value}: expected true or false (yes/no and on/off work too)")


def missing_hint(key: str, choice: str | None, conf_dirs: Iterable[Path] = ()) -> str:
    """What a mandatory option expects, from the comment on its ``???`` line in the chosen group config."""
    group, _, leaf = key.partition(".")
    for folder in [*conf_dirs, _conf_dir()]:
        path = Path(folder) / group / f"{choice}.yaml"
        if choice and "." not in leaf and path.is_file():
            found = re.search(rf"^{re.escape(leaf)}:\s*\?\?\?\s*#\s*(.+)$", path.read_text(), re.MULTILINE)
            if found:
                return found.group(1).strip()
    return f"a value: {key}=..."


def _keys(node: Any, prefix: str = "") -> Iterable[str]:
    """Dotted keys of a nested mapping, in file order."""
    for key, value in (node.items() if isinstance(node, dict) else ()):
        yield f"{prefix}{key}"
        yield from _keys(value, f"{prefix}{key}.")


def check_config(cfg: DictConfig, conf_dirs: Iterable[Path] = ()) -> DictConfig:
    """The checks a config allows before any model or folder is touched (the command line runs them
    on every job of a sweep before Hydra starts; ``study.run`` again): no mandatory option left unset
    (``data.root``), and every boolean option (see ``bool_options``) a bool, spellings normalised in place.

    Args:
        conf_dirs: extra config folders (``--config-dir``) where the hint for an unset option may be.

    Raises:
        ValueError: one line naming the option and what it expects.
    """
    unset = OmegaConf.missing_keys(cfg)
    if unset:
        key = next((k for k in _keys(OmegaConf.to_container(cfg, resolve=False)) if k in unset), min(unset))
        group = key.split(".")[0]
        choice = OmegaConf.select(cfg, f"{group}.name", default=None) if "." in key else None
        where = f" ({group}={choice})" if choice else ""
        raise ValueError(f"{key} is not set{where}; expected {missing_hint(key, choice, conf_dirs)}")
    for key in bool_options():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not isinstance(value, bool):
            OmegaConf.update(cfg, key, as_bool(key, value), merge=False)
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
    return Plan(method, layers, heads, ScoreOptions.from_config(cfg), plan_extras(cfg, backbone, method))


def plan_extras(cfg: DictConfig, backbone: Backbone, method: MapMethod) -> tuple[str, ...]:
    """What the run captures beside the maps: pooled representations (``save_representations``) and,
    for ``cls_attention``, the mean attention distance per head (``metrics.attention_distance``)."""
    extras: list[str] = []
    save = cfg.get("save_representations", False)
    distance = OmegaConf.select(cfg, "metrics.attention_distance", default=False)
    for key, value in (("save_representations", save), ("metrics.attention_distance", distance)):
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value}: expected true or false")
    if save:
        extras += [f"rep_{kind}" for kind in backbone.representation_kinds]
    if distance and method.name == "cls_attention":
        extras.append("attention_distance")
    return tuple(extras)


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
        import multiprocessing

        if multiprocessing.current_process().name != "MainProcess":  # a launcher's worker (joblib's loky)
            return 0  # cannot start DataLoader processes of its own
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
