"""The scoring options: how maps become masks and numbers (the scoring part of a run's options)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ..methods.threshold import RULES
from ..methods.upsample import MODES
from ..config.schema import MetricsOptions, StudyConfig, typed


@dataclass
class ScoreOptions:
    """How maps become masks and numbers: the scoring part of a run's options, defaults from the schema
    (``options.StudyConfig``, ``options.MetricsOptions``).

    Attributes:
        thresholds: values for ``rule`` (keep-mass fractions or min-max levels).
        rule: ``keep_mass`` or ``minmax``.
        upsample: ``nearest`` (score on the grid with pixel counts, exact) or ``bilinear``
            (score the smoothed map pixel by pixel; thresholds apply to it too).
        fpr_limit: AUPRO integration limit.
        topk: fraction of cells averaged for ``score_topk``.
        pointing_tolerance: pixels around the mask a map's maximum may fall (``pointing_tol``).
    """

    thresholds: list[float]
    rule: str = StudyConfig.threshold_rule
    upsample: str = StudyConfig.upsample
    fpr_limit: float = MetricsOptions.aupro_fpr_limit
    topk: float = MetricsOptions.image_topk
    pointing_tolerance: float = MetricsOptions.pointing_tolerance
    sparseness: bool = MetricsOptions.sparseness  # the gini and complexity columns

    @classmethod
    def of(cls, threshold: Any, rule: str, upsample_mode: str, metrics: MetricsOptions) -> "ScoreOptions":
        """Check ``threshold``, ``threshold_rule``, ``upsample`` and the scoring ``metrics.*`` options.

        Raises:
            ValueError: naming the option and what it accepts.
        """
        thresholds = OmegaConf.to_container(threshold) if OmegaConf.is_config(threshold) else threshold
        thresholds = list(thresholds) if isinstance(thresholds, (list, tuple)) else [thresholds]
        if not thresholds or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds):
            raise ValueError(f"threshold={thresholds}: expected a number or a list of numbers in [0, 1]")
        bad = [t for t in thresholds if not 0 <= t <= 1]
        if bad:
            raise ValueError(f"threshold={bad}: thresholds must be in [0, 1]")
        if rule not in RULES:
            raise ValueError(f"threshold_rule={rule}: expected one of {', '.join(RULES)}")
        if upsample_mode not in MODES:
            raise ValueError(f"upsample={upsample_mode}: expected one of {', '.join(MODES)}")
        limit, topk, tolerance = metrics.aupro_fpr_limit, metrics.image_topk, metrics.pointing_tolerance
        if not 0 < limit <= 1:
            raise ValueError(f"metrics.aupro_fpr_limit={limit:g}: expected a value in (0, 1]")
        if not 0 < topk <= 1:
            raise ValueError(f"metrics.image_topk={topk:g}: expected a fraction in (0, 1]")
        if tolerance < 0:
            raise ValueError(f"metrics.pointing_tolerance={tolerance:g}: expected pixels >= 0")
        return cls([float(t) for t in thresholds], rule, upsample_mode, float(limit), float(topk), float(tolerance),
                   bool(getattr(metrics, "sparseness", False)))

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> "ScoreOptions":
        """Read and check the scoring options of a whole config, such as a run's saved ``config.yaml``
        (missing keys take the schema's defaults).

        Raises:
            ValueError: naming the option and what it accepts.
        """
        opts = typed(StudyConfig, {k: cfg[k] for k in ("threshold", "threshold_rule", "upsample", "metrics")
                                   if k in cfg})
        return cls.of(opts.threshold, opts.threshold_rule, opts.upsample, opts.metrics)
