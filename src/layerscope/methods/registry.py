"""Every map method, torch-free, read from the configs (``conf/method/*.yaml``): its name, map axis, whether
it needs gradients or a ViT, and its options' defaults, for the readers that must not import torch (the
page, the figures, the W&B logger) and for the API's messages, the README's table and the tests.

A method is a class (in ``layerscope/methods/``) and a YAML, ``conf/method/<name>.yaml``, whose defaults list names
the method's *family* here and whose ``_target_`` names the class::

    defaults:
      - /method_options/gradient@_here_
      - _self_
    _target_: layerscope.methods.cam.GradCAM

The family holds what the methods of one kind share: the options with their one default each (a dataclass
of ``layerscope.config.method_options``; Hydra reads it as ``method_options/<family>``, so no YAML restates a
default) and the facts here.
A preset (``patchcore``, ``anomalydino``) is a YAML whose defaults list names another method's YAML and
that sets only the options it changes. A new method of an existing family (a CAM) is its class and its
YAML; a new family adds its options there and its facts here.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config.method_options import OPTIONS, OPTIONS_GROUP, option_defaults

HEADS = "heads"  # the K maps of a layer are its attention heads (named 0, 1, ..., plus their mean)
MAPS = "maps"  # any other maps (feature reductions, CAMs, rollout's one head-fused map, patch k-NN)
BY_MODEL = "heads (ViT) or maps (CNN)"  # auto: cls_attention's heads on a ViT with a CLS token, else features'


@dataclass(frozen=True)
class Family:
    """What the methods of one kind share.

    Attributes:
        options: the options' dataclass (each option's one default).
        map_axis: ``heads`` or ``maps`` (``results/axes.py``).
        needs_grad: its maps need the gradient of a target score (one backward pass per batch).
        vit_only: it reads attention, so it applies to ViTs only.
        needs_references: it learns from normal images first (``references=`` in the API).
    """

    options: type
    map_axis: str = MAPS
    needs_grad: bool = False
    vit_only: bool = False
    needs_references: bool = False


FAMILIES: dict[str, Family] = {name: Family(OPTIONS[name], **facts) for name, facts in {
    "cls_attention": dict(map_axis=HEADS, vit_only=True),
    "features": {},
    "auto": dict(map_axis=BY_MODEL),
    "rollout": dict(vit_only=True),
    "gradient": dict(needs_grad=True),
    "attn_grad": dict(needs_grad=True, vit_only=True),
    "eigencam": {},
    "patch_knn": dict(needs_references=True),
}.items()}


@dataclass(frozen=True, kw_only=True)
class MethodInfo(Family):
    """One ``method=`` choice, read from its YAML, with its family's facts (``Family``'s attributes).

    Attributes:
        name: the YAML's file name (``method=<name>``).
        target: the class (or function) the YAML's ``_target_`` names, dotted.
        family: its family's name (``FAMILIES``).
        defaults: every option's default, the family's with the YAML's own values over them.
        preset_of: the method a preset sets options of (``patchcore`` -> ``patch_knn``), else None.
    """

    name: str
    target: str
    family: str
    defaults: dict[str, Any]
    preset_of: Optional[str] = None


def _method_dir() -> Path:
    """``conf/method``: inside an installed wheel (``layerscope/conf``), else the checkout's top-level ``conf/``;
    the folder ``layerscope.config.paths.config_dir`` names (a test checks they agree; the configs sit below
    the methods in the pipeline, so this one does not import that one's callers)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "conf" / "method"
    return installed if installed.is_dir() else package.parents[1] / "conf" / "method"


def _read(path: Path, seen: tuple[str, ...] = ()) -> MethodInfo:
    """One method YAML as a ``MethodInfo`` (a preset's family, target and defaults through the YAML it names).

    Raises:
        ValueError: a defaults list that names neither a family nor another method's YAML (one line).
    """
    import yaml

    node = yaml.safe_load(path.read_text()) or {}
    name, family, preset_of = path.stem, None, None
    values = {k: v for k, v in node.items() if k not in ("defaults", "_target_")}
    target = node.get("_target_")
    base: MethodInfo | None = None
    for entry in node.get("defaults") or []:
        if entry == "_self_":
            continue
        entry = str(entry)
        named = entry.removeprefix(f"/{OPTIONS_GROUP}/").removesuffix("@_here_")
        if entry == f"/{OPTIONS_GROUP}/{named}@_here_" and named in FAMILIES:
            family = named
        elif (path.parent / f"{entry}.yaml").is_file() and entry not in seen:
            base = _read(path.parent / f"{entry}.yaml", (*seen, name))
            family, preset_of = base.family, base.preset_of or base.name
        else:
            raise ValueError(f"{path}: defaults entry {entry!r}: expected /{OPTIONS_GROUP}/<family>@_here_ (families: "
                             f"{', '.join(FAMILIES)}) or another method's name")
    if family is None:
        raise ValueError(f"{path}: its defaults list names no family: expected /{OPTIONS_GROUP}/<family>@_here_ "
                         f"(families: {', '.join(FAMILIES)})")
    defaults = dict(base.defaults) if base else option_defaults(family)
    defaults.update(values)
    facts = {f.name: getattr(FAMILIES[family], f.name) for f in dataclasses.fields(Family)}
    return MethodInfo(**facts, name=name, target=str(target or (base.target if base else "")), family=family,
                      defaults=defaults, preset_of=preset_of)


@functools.lru_cache(maxsize=None)
def methods() -> dict[str, MethodInfo]:
    """Every ``method=`` choice of the configs, by name (sorted)."""
    return {p.stem: _read(p) for p in sorted(_method_dir().glob("*.yaml"))}


def names(*, needs_grad: bool | None = None, vit_only: bool | None = None) -> list[str]:
    """The methods' names (sorted), presets included; ``needs_grad=True``: the gradient methods only;
    ``vit_only=True``: those that read attention (ViTs only)."""
    return [n for n, m in methods().items()
            if (needs_grad is None or m.needs_grad == needs_grad) and (vit_only is None or m.vit_only == vit_only)]


def info(name: object) -> MethodInfo | None:
    """The method ``name`` (a ``method=`` choice or a saved result's method), or None for one not in the configs."""
    return methods().get(str(name))

