"""The map methods' options, each with its one default: one dataclass per family of methods, stored in Hydra's
``ConfigStore`` as ``method_options/<family>``, the node each method YAML's defaults list names (so no YAML
restates a default). ``layerscope.methods.registry`` says which methods each family holds and what they are.
A leaf, as the rest of the schema: every layer may read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

OPTIONS_GROUP = "method_options"  # the ConfigStore group of the families' options


@dataclass
class NoOptions:
    """A method without options."""


@dataclass
class FeaturesOptions:
    """``features`` (and ``auto`` on a CNN): channel reductions of each layer's features."""

    reductions: list = field(default_factory=lambda: ["l2", "mean_abs", "pca"])  # any of l2, mean_abs, pca


@dataclass
class RolloutOptions:
    """``rollout`` (Abnar & Zuidema 2020)."""

    head_fusion: str = "mean"  # mean | max | min
    discard_ratio: float = 0.0  # fraction of the smallest fused attention entries zeroed per layer, in [0, 1)
    chunk: int = 1024  # query rows per block (memory bound)


@dataclass
class GradientOptions:
    """Every gradient method: the score explained (see ``methods/cam.py``)."""

    target_class: Optional[int] = None  # class index explained; null = each image's predicted class
    embedding_target: str = "norm"  # no classifier (DINO, DINOv2): norm | cosine (ViTs: CLS vs mean patch)


@dataclass
class AttnGradOptions(GradientOptions):
    """``attn_grad`` (Chefer et al. 2021)."""

    chunk: int = 1024  # query rows per block (memory bound)


@dataclass
class EigenCAMOptions:
    """``eigencam`` (Muhammad & Yeasin 2020)."""

    centred: bool = False  # centre the activations per channel before the SVD (pytorch-grad-cam's EigenCAM)


@dataclass
class PatchKNNOptions:
    """``patch_knn`` (PatchCore, AnomalyDINO without training); each option one published convention
    (``methods/knn_conventions.py`` holds them, with their sources)."""

    k: int = 1  # nearest bank entries averaged
    metric: str = "euclidean"  # euclidean (PatchCore) | cosine (AnomalyDINO: 1 - cosine similarity)
    aggregate: int = 1  # 1 (off) | 3 | 5: PatchCore's local p x p feature average (zero padding, divisor p*p)
    coreset: str = "random"  # random | greedy (PatchCore's approximate greedy k-center, seeded projection)
    coreset_ratio: Optional[float] = None  # fraction of the bank the coreset keeps (PatchCore: 0.1); None = all
    bank_size: Optional[int] = 16384  # most entries kept per layer after coreset_ratio (None = no cap)
    smooth_sigma: float = 0  # Gaussian smoothing at image size, sigma in px (PatchCore/anomalib: 4); 0 = off
    mask_background: bool = False  # AnomalyDINO's PCA foreground masking (object categories, not textures)
    mask_threshold: float = 10.0  # first principal component's threshold of that mask (AnomalyDINO)
    augment_references: str = "none"  # none | rotations (AnomalyDINO: each reference at 0, 45, ..., 315 degrees)
    fuse: list = field(default_factory=list)  # fused candidates, e.g. [[2, 3]] (PatchCore's layer2 + layer3)
    n_references: Optional[int] = 16  # normal images in the bank (None = all the dataset offers)
    chunk: int = 2048  # query patches per distance block (memory bound)
    seed: int = 0  # coreset seed (a run passes its own ``seed``)


OPTIONS: dict[str, type] = {
    "cls_attention": NoOptions, "features": FeaturesOptions, "auto": FeaturesOptions, "rollout": RolloutOptions,
    "gradient": GradientOptions, "attn_grad": AttnGradOptions, "eigencam": EigenCAMOptions,
    "patch_knn": PatchKNNOptions,
}


def option_defaults(family: str) -> dict[str, Any]:
    """The family's options with their defaults, as a plain dict (the ConfigStore node)."""
    return dataclasses.asdict(OPTIONS[family]())


def register() -> None:
    """Store each family's options as ``method_options/<family>`` in Hydra's ``ConfigStore`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for family in OPTIONS:
        store.store(group=OPTIONS_GROUP, name=family, node=option_defaults(family))


register()
