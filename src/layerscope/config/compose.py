"""What composing a run's config adds to it: the model's and the data's names, from the configs chosen."""
from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, open_dict


def name_from_choices(cfg: DictConfig, choices: Mapping[str, Any]) -> DictConfig:
    """Name the model and the data after the config chosen (``model=dino_vits8`` -> ``model.name``).

    The name is the config's file name, so no YAML repeats it; one set explicitly is kept.
    """
    with open_dict(cfg):
        for group in ("model", "data"):
            if cfg.get(group) is not None and not cfg[group].get("name") and choices.get(group):
                cfg[group].name = str(choices[group])
    return cfg
