"""The checks a composed config must pass before any model or folder is touched: no mandatory option left
unset, every boolean option a bool (``check_config``)."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from .paths import config_dir
from .schema import as_bool, bool_fields


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
