"""What a batch yields beside its maps' rows, per image: deletion/insertion AUCs (``metrics.faithfulness``),
attention distance per head, the representations a run saves, and the conventions named in the rows."""
from __future__ import annotations

import torch

from .backbones import Backbone
from .backbones.distance import EXTRAS as DISTANCE_EXTRAS
from .config.schema import StudyConfig
from .data.handover import Item
from .plan import Plan, chosen_maps


def faithfulness_columns(cfg: StudyConfig, plan: Plan, backbone: Backbone, items: list[Item],
                  per_image: list[dict[int, torch.Tensor]], logits: list[torch.Tensor | None]) -> list[dict | None]:
    """Deletion and insertion AUC of every chosen map of a batch (``metrics.faithfulness``), per image:
    layer -> {"deletion_auc": (K,), "insertion_auc": (K,)}; None per image when not asked for."""
    if not cfg.metrics.faithfulness:
        return [None] * len(items)
    from .mapsource import faithfulness

    x = torch.stack([item.x for item in items])
    chosen = [chosen_maps(plan, m) for m in per_image]
    maps = {layer: torch.stack([c[layer] for c in chosen]) for layer in chosen[0]}
    target_class = getattr(plan.method, "target_class", None)
    target = torch.full((len(items),), int(target_class)) if target_class is not None else \
        torch.stack([lg.argmax(-1) for lg in logits])
    values = faithfulness(backbone, x, maps, target, int(cfg.metrics.faithfulness_steps),
                          str(cfg.metrics.faithfulness_baseline), int(cfg.batch_size) * 4,
                          tie_orders=cfg.metrics.faithfulness_tie_orders, seed=cfg.seed)
    return [{layer: {"deletion_auc": v[i, :, 0], "insertion_auc": v[i, :, 1]} for layer, v in values.items()}
            for i in range(len(items))]


def distance_columns(plan: Plan, captured: dict[str, dict[int, torch.Tensor]], unit_scale: float = 1.0
                      ) -> dict | None:
    """``attention_distance`` of the chosen heads and, for the ``mean`` row, the mean over every head:
    layer -> {"attention_distance": (K,)}; None when the run does not measure it.

    Args:
        unit_scale: multiplies the captured pixels (1 / the image side for ``attention_distance_unit=fraction``).
    """
    per_layer = next((captured[name] for name in DISTANCE_EXTRAS.values() if captured.get(name)), None)
    if not per_layer:
        return None
    return {layer: {"attention_distance": torch.cat([d[plan.heads], d.mean().view(1)]) * unit_scale}
            for layer, d in per_layer.items()}


def representations(captured: list[dict[str, dict[int, torch.Tensor]]], items: list[Item], grid: int
                     ) -> list[dict[str, dict[int, object]]]:
    """What a batch saves per image (``results.representations``): the pooled kinds as captured and, from
    ``rep_patches`` (layer -> (h, w, D) cells), ``patches`` pooled to at most ``grid`` a side plus ``defect``
    and ``background`` (the mask-weighted means of the layer's cells, ``results.cells``)."""
    from .results.cells import adaptive_pool, mask_pooled

    out = []
    for extra, item in zip(captured, items):
        reps: dict[str, dict[int, object]] = {k: v for k, v in extra.items() if k.startswith("rep_")}
        if "rep_patches" in reps:
            mask = item.mask.numpy() if item.mask is not None else None
            patches, defect, background = {}, {}, {}
            for layer, cells in extra["rep_patches"].items():
                cells = cells.numpy()
                h, w = cells.shape[:2]
                patches[layer] = adaptive_pool(cells, (min(h, grid), min(w, grid)))
                defect[layer], background[layer] = mask_pooled(cells, mask)
            reps.update(rep_patches=patches, rep_defect=defect, rep_background=background)
        out.append(reps)
    return out


def distance_conventions(cfg: StudyConfig, plan: Plan) -> dict:
    """The ``attention_distance_rule`` / ``_unit`` columns of a run that measures attention distance."""
    if not any(e in DISTANCE_EXTRAS.values() for e in plan.extras):
        return {}
    return {"attention_distance_rule": str(cfg.metrics.attention_distance_rule),
            "attention_distance_unit": str(cfg.metrics.attention_distance_unit)}


def merged_columns(faith: dict | None, columns: dict | None) -> dict | None:
    """One image's per-map columns from the model (faithfulness) and from the pass (attention distance):
    layer -> column -> (K,)."""
    if not columns:
        return faith
    return {layer: {**(faith or {}).get(layer, {}), **cols} for layer, cols in columns.items()}
