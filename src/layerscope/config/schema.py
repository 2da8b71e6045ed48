"""The run's options, typed, each default declared once: the schema of ``conf/config.yaml``.

Hydra structured configs (``ConfigStore``): ``config.yaml``'s defaults list starts with
``base_config``, this module's ``StudyConfig``, so every top-level, ``metrics.*``, ``cache.*`` and
``figures.*`` option has its type and default here, and a value of the wrong type
(``metrics.image_topk=abc``) is refused while the config is composed. The groups (``model``,
``data``, ``method``, ``logger``) stay free-form: their schema is the class their ``_target_`` names.

Each part of a run gets its own typed options (``MetricsOptions`` for scoring and faithfulness,
``CacheOptions`` for the map cache, ``FigureOptions`` for the grids), read with ``typed``.

An option that takes one of a few words is typed ``Literal[...]`` here: those words are its accepted
values, for the checks (``choices``, ``check_choice``) and the messages (``expected``). Hydra's copy of
the schema types them ``str`` (OmegaConf has no ``Literal``); the run checks them against the plan.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

SCHEMA = "base_config"  # the name config.yaml's defaults list gives the schema
TRUE, FALSE = ("true", "yes", "on"), ("false", "no", "off")  # YAML 1.1 spellings, any case


Device = Literal["auto", "cpu", "cuda"]  # auto: CUDA when visible
Precision = Literal["fp32", "bf16", "fp16"]  # autocast on GPU; maps accumulate in fp32
OnBadImage = Literal["skip", "fail"]
ThresholdRule = Literal["keep_mass", "minmax"]
Upsample = Literal["nearest", "bilinear"]
FaithfulnessBaseline = Literal["blur", "mean"]
Randomisation = Literal["none", "cascading", "independent"]
RandomisationSeeding = Literal["per_module", "once"]
RandomLogitRule = Literal["image", "quantus"]
DistanceRule = Literal["renormalised", "raw"]
DistanceUnit = Literal["pixels", "fraction"]


def choices(kind: Any) -> tuple[str, ...]:
    """The values a ``Literal`` option type accepts, in their declared order (``Precision`` -> fp32, bf16, fp16)."""
    return typing.get_args(kind)


def _is_choice(kind: Any) -> bool:
    return typing.get_origin(kind) is Literal


def _one_of(values: tuple[str, ...]) -> str:
    return f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]


def check_choice(key: str, value: Any, cls: type | None = None) -> Any:
    """``value`` when the schema's type of the dotted option ``key`` lists it, else ValueError naming them.

    Raises:
        ValueError: ``precision=fp64: expected fp32, bf16 or fp16``.
    """
    kind = _field_type(key, cls if cls is not None else StudyConfig)
    if value not in choices(kind):
        raise ValueError(f"{key}={value}: expected {_one_of(choices(kind))}")
    return value


def _field_type(key: str, cls: type) -> Any:
    head, _, rest = key.partition(".")
    kind = _hints(cls)[head]
    return _field_type(rest, kind) if rest else kind


def _option(default: Any, expected: str) -> Any:
    """A field with its default and, for messages, what it expects beyond its type (``an int >= 1``)."""
    return field(default=default, metadata={"expected": expected})


@dataclass
class MetricsOptions:
    """``metrics.*``: how maps are scored beyond the threshold (see the README's Outputs)."""

    aupro_fpr_limit: float = _option(0.3, "a value in (0, 1]")  # AUPRO integrates PRO over FPR in [0, limit], normalised
    image_topk: float = _option(0.01, "a fraction in (0, 1]")  # score_topk = mean of the top 1% of a map's cells (image-level score)
    # deletion_auc / insertion_auc per map (models with a classifier; 2 + 2 K (steps - 1) forwards per image and layer)
    faithfulness: bool = False
    faithfulness_steps: int = _option(10, "an int >= 2")  # cells removed / revealed in this many equal steps
    # what removed cells show: blur (Gaussian, sigma = side / 32) | mean (the image's mean colour)
    faithfulness_baseline: FaithfulnessBaseline = "blur"
    # equal-valued cells across a step's cut: AUCs averaged over this many seeded random orders (0: raster order)
    faithfulness_tie_orders: int = _option(4, "an int >= 0")
    pointing_tolerance: float = _option(15.0, "pixels >= 0")  # pixels: the pointing game's hit radius around the mask (TorchRay benchmark)
    # cls_attention: each head's mean attention distance (input pixels), same pass (x1.46 a forward)
    attention_distance: bool = False
    sparseness: bool = False  # gini and complexity per map (no model: rescore computes them)
    # road_morf / road_lerf / aopc per map (Rong et al. 2022; models with a classifier; 18 imputed forwards per map)
    road: bool = False
    road_noise: float = _option(0.01, "a standard deviation >= 0")  # ROAD's imputation noise, in RGB units
    # none | cascading (full re-initialisation) | independent (each layer's own block): mprt_spearman, mprt_ssim,
    # random_logit_ssim (Adebayo et al. 2018)
    randomisation: Randomisation = "none"
    # per_module (torch.manual_seed(seed + 1) before each module: same-shaped blocks get the same weights; Quantus 0.6)
    # | once (one seeded stream for all modules: each block its own draw; Adebayo et al. 2018)
    randomisation_seeding: RandomisationSeeding = "per_module"
    # random_logit_ssim: image (each map |m| / max |m|, 2-D SSIM; Sixt et al. 2020) | quantus (signed maps over
    # the batch's max |m|, SSIM of the flattened maps; Quantus 0.6 RandomLogit)
    random_logit_rule: RandomLogitRule = "image"
    # renormalised (each query's attention over the patch keys, re-summed to 1) | raw (the patch rows and
    # columns as the model gives them, prefix attention dropped, not renormalised: the common implementation)
    attention_distance_rule: DistanceRule = "renormalised"
    # pixels (input pixels) | fraction (of the image side: the [0, 1] grid of Walmer et al. 2023)
    attention_distance_unit: DistanceUnit = "pixels"


@dataclass
class CacheOptions:
    """``cache.*``: the map cache, reused across runs (not for ``patch_knn``)."""

    enabled: bool = True
    dir: Optional[str] = None  # null = $LAYERSCOPE_CACHE/maps (default ~/.cache/layerscope/maps)
    max_gb: float = _option(2.0, "a size in GB > 0")  # least recently used entries are removed beyond this


@dataclass
class FigureOptions:
    """``figures.*``: the run's own pictures."""

    grid: bool = True  # layer x head grid per image
    max_images: int = _option(8, "an int >= 0")


@dataclass
class StudyConfig:
    """The top level of a run's config. ``layer``, ``head``, ``threshold`` and ``num_workers`` take
    several types (an int, a list, ``all``/``auto``): the plan checks them against the model."""

    model: Any = None  # the groups, free-form here (their schema is their _target_): config.yaml's defaults list
    data: Any = None  # fills them; None where a part reads its own options alone (a saved config's metrics)
    method: Any = None
    logger: Any = None
    layer: Any = "all"  # int, list, negative from the end, or all; range(0,12) = all of them in one pass
    head: Any = "all"  # which heads (attention) or reductions (features) get their own rows
    threshold: Any = field(default_factory=lambda: [0.6])  # keep-mass fractions (DINO used 0.6), or min-max levels
    threshold_rule: ThresholdRule = "keep_mass"
    upsample: Upsample = "nearest"  # nearest: score on the grid (exact, as DINO's pictures) | bilinear: per pixel
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    batch_size: int = _option(4, "an int >= 1")
    num_workers: Any = "auto"  # DataLoader worker processes preparing images (auto: one per core but one, <= 4)
    device: Device = "auto"
    precision: Precision = "fp32"
    on_bad_image: OnBadImage = "skip"  # skip: log and count unreadable images | fail: stop at the first one
    resume: bool = True  # skip a run folder that already holds a finished run of the same config
    cache: CacheOptions = field(default_factory=CacheOptions)
    seed: int = _option(0, "an int >= 0")
    save_maps: bool = True
    save_representations: bool = False  # per layer, each image's pooled representation, for layerscope-compare
    # the patches kind: each layer's cells average-pooled to at most this many a side (defect/background: the layer's own cells)
    representation_grid: int = _option(8, "an int >= 1")
    dataset_metrics: bool = True  # dataset-level protocol at the end (dataset_metrics.csv; reads the saved maps)
    progress: bool = True
    figures: FigureOptions = field(default_factory=FigureOptions)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_options(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


@functools.lru_cache(maxsize=None)
def _loose(cls: type) -> type:
    """``cls`` (a subclass, so values read back are a ``cls``) with its booleans typed ``Any``, its choices ``str``.

    OmegaConf's bool takes 1, 0, y and n too; the project accepts true/false, yes/no and on/off only
    and names the option otherwise (``config.checks.check_config``), so the schema leaves booleans to it.
    OmegaConf has no ``Literal``: a choice is read as a string and checked where the run uses it.
    """
    hints, changed = _hints(cls), []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if kind is bool:
            changed.append((f.name, Any, field(default=f.default)))
        elif _is_choice(kind):
            changed.append((f.name, str, field(default=f.default, metadata=f.metadata)))
        elif _is_options(kind):
            changed.append((f.name, _loose(kind), field(default_factory=_loose(kind))))
    loose = dataclasses.make_dataclass(cls.__name__, changed, bases=(cls,))
    loose.__module__ = __name__
    return loose


def register() -> None:
    """Store the schema as ``base_config`` in Hydra's ``ConfigStore`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA, node=_loose(StudyConfig))


def bool_fields(cls: type = StudyConfig, prefix: str = "") -> list[str]:
    """Dotted names of the schema's boolean options (``save_maps``, ``metrics.faithfulness``, ...)."""
    out = []
    for name, kind in _hints(cls).items():
        if kind is bool:
            out.append(f"{prefix}{name}")
        elif _is_options(kind):
            out += bool_fields(kind, f"{prefix}{name}.")
    return out


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


def expected(key: str, cls: type = StudyConfig) -> str:
    """What the schema expects of a dotted option (``metrics.image_topk`` -> ``a number``)."""
    head, _, rest = key.partition(".")
    kind = _hints(cls).get(head)
    if _is_options(kind):
        return expected(rest, kind) if rest else f"the options {key}.* ({', '.join(_hints(kind))})"
    told = next((f.metadata.get("expected") for f in dataclasses.fields(cls) if f.name == head), None)
    if told:
        return told
    if _is_choice(kind):
        return _one_of(choices(kind))
    words = {float: "a number", int: "an int", str: "a string", bool: "true or false (yes/no and on/off work too)",
             Optional[str]: "a string or null"}
    return words.get(kind, "a value")


def type_error(error: ValidationError, given: str | None = None) -> str:
    """One line for a value the schema refuses: ``metrics.image_topk=abc: expected a number``.

    Args:
        error: OmegaConf's error (its ``full_key`` names the option).
        given: the value as the user wrote it; else the one in the error.
    """
    key = str(getattr(error, "full_key", "") or "")
    value = given if given is not None else getattr(error, "value", "?")
    return f"{key}={value}: expected {expected(key)}"


def _known(cls: type, node: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``node`` that are options of ``cls``, nested ones likewise (a saved config of another
    version may hold keys this one does not know)."""
    hints, out = _hints(cls), {}
    for key, value in node.items():
        if key in hints:
            out[key] = _known(hints[key], value) if _is_options(hints[key]) and isinstance(value, Mapping) else value
    return out


def typed(cls: type, node: Any = None, prefix: str = "") -> Any:
    """``node`` (a config, a dict, possibly partial) read as ``cls``: defaults from ``cls``, types checked,
    booleans by ``as_bool``, keys ``cls`` does not have ignored.

    Args:
        cls: ``StudyConfig`` or one of its option classes.
        node: the values given (a composed run config, a saved ``config.yaml``, keywords).
        prefix: the options' place in the run config (``metrics.``), for messages.

    Returns:
        An instance of ``cls`` (groups of a ``StudyConfig`` as plain containers, interpolations resolved).

    Raises:
        ValueError: one line naming the option and what it expects.
    """
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    try:
        merged = OmegaConf.merge(OmegaConf.structured(_loose(cls)), _known(cls, plain))
    except ValidationError as e:
        full = f"{prefix}{e.full_key}" if prefix else str(e.full_key)
        raise ValueError(f"{full}={e.value if hasattr(e, 'value') else '?'}: expected {expected(str(e.full_key), cls)}"
                         ) from None
    for key in bool_fields(cls):
        value = OmegaConf.select(merged, key)
        if not isinstance(value, bool):
            OmegaConf.update(merged, key, as_bool(f"{prefix}{key}", value), merge=False)
    return _build(cls, OmegaConf.to_container(merged, resolve=True))


def _build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` itself (not the schema's loosened subclass: equal to one built by hand)."""
    hints = _hints(cls)
    return cls(**{k: _build(hints[k], v) if _is_options(hints[k]) else v for k, v in values.items()})


register()
