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
from .data.base import Dataset, check_dataset
from .methods.methods import MapMethod
from .metrics.faithfulness import check_faithfulness
from .options import StudyConfig, as_bool, bool_fields, typed
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
    """Every boolean option: the schema's booleans (``save_maps``, ``metrics.faithfulness``, see
    ``options.StudyConfig``) and the keys whose default is true or false in ``config.yaml`` and in the
    configs of each group (``model.pretrained``, ``data.recursive``, ...), read from the YAML files
    themselves so that a new boolean option is checked without being listed anywhere.
    """
    conf = Path(conf_dir) if conf_dir is not None else _conf_dir()
    kinds: dict[str, set[bool]] = {key: {True} for key in bool_fields()}
    files = [(conf / "config.yaml", "")]
    files += [(f, f"{group.name}.") for group in sorted(conf.iterdir())
              if group.is_dir() and group.name not in GROUPS_WITHOUT_DEFAULTS for f in sorted(group.rglob("*.yaml"))]
    for path, prefix in files:
        for key, is_bool in _bool_leaves(OmegaConf.to_container(OmegaConf.load(path)), prefix):
            kinds.setdefault(key, set()).add(is_bool)
    return tuple(sorted(key for key, seen in kinds.items() if seen == {True}))


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
    if opts.on_bad_image not in ("skip", "fail"):
        raise ValueError(f"on_bad_image={opts.on_bad_image}: expected skip or fail")
    if opts.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision={opts.precision}: expected fp32, bf16 or fp16")
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
    from .methods.distance import EXTRAS, check_conventions

    rule = str(opts.metrics.attention_distance_rule)
    check_conventions(rule, str(opts.metrics.attention_distance_unit))
    extras: list[str] = []
    if opts.save_representations:
        extras += [f"rep_{kind}" for kind in backbone.representation_kinds]
    if opts.metrics.attention_distance and method.name == "cls_attention":
        extras.append(EXTRAS[rule])
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


def score_threads() -> int:
    """Grids a study scores at once (``scoring.batch_image_rows``): one per usable core, at most 8."""
    return max(1, min(8, usable_cores()))


def writer_threads() -> int:
    """Images written at once by the study's background writer: one, or a few on a many-core machine (a GPU
    study outruns one thread compressing saved maps)."""
    return max(1, min(4, usable_cores() // 4))


def build_dataset(cfg: DictConfig) -> Dataset:
    """Instantiate ``cfg.data`` (its ``name`` key is metadata, not an argument).

    Raises:
        ValueError: the class built is not a ``data.base.Dataset`` (naming what it lacks).
    """
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("name", None)
    return check_dataset(build(data))
