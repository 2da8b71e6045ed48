"""How well a continuous map ranks mask pixels above background pixels, and the tie groups it rests on.

Every rank metric here (AUROC, and in ``localization`` the oracle IoU and AUPRO) counts pixels per
group of equal scores. ``rank_rows`` sorts all rows of a (R, n) block at once and ``group_sums``
adds any per-item weights over each row's tie groups with one ``index_add_``: no Python loop over
maps, tie groups or thresholds, so a layer's K maps cost about what one map did.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class Ranked:
    """Rows of scores sorted ascending once, with their tie groups.

    Attributes:
        order: (R, n) long, ``order[r, j]`` = the item at sorted position ``j`` of row ``r``.
        group: (R, n) long, tie group of sorted position ``j``, 0-based per row, ascending scores.
        n_groups: (R,) long, tie groups per row (positions ``n_groups[r]..n-1`` of group sums are 0).
        values: (R, n) the scores sorted ascending, where the sort kept them (else None).
    """

    order: torch.Tensor
    group: torch.Tensor
    n_groups: torch.Tensor
    values: torch.Tensor | None = None

    @classmethod
    def from_sorted(cls, values: torch.Tensor, order: torch.Tensor) -> "Ranked":
        """Tie groups of rows already sorted ascending.

        Args:
            values: (R, n) scores sorted ascending along the last dim (any float dtype).
            order: (R, n) the permutation that sorted them.
        """
        starts = torch.ones_like(values, dtype=torch.bool)
        starts[:, 1:] = values[:, 1:] != values[:, :-1]  # a new group wherever the sorted score changes
        group = torch.cumsum(starts, dim=-1).sub_(1)
        return cls(order, group, group[:, -1] + 1)

    @cached_property
    def joined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tied, row, pos): the rows with ties, (T,) long, and every item followed by one of its tie group, row
        by row: its row (a position in ``tied``) and its sorted position. Found once, for the sums over the tie
        groups and for the moves that close them up (``kept_pixels``)."""
        tied = torch.nonzero(self.n_groups < self.order.shape[1]).flatten()
        group = self.group[tied]
        row, pos = torch.nonzero(group[:, 1:] == group[:, :-1], as_tuple=True)
        return tied, row, pos


def rank_rows(scores: torch.Tensor) -> Ranked:
    """Sort each row of ``scores`` (R, n) ascending once and find its tie groups."""
    values, order = torch.sort(scores, dim=-1)
    return Ranked.from_sorted(values, order)


def group_sums(ranked: Ranked, weights: torch.Tensor) -> torch.Tensor:
    """Sum per-item weights over each row's tie groups, groups in ascending score order.

    Args:
        ranked: the sorted rows, (R, n).
        weights: (n,) or (n, C) per-item weights (the same for every row).

    Returns:
        (R, n) or (R, n, C) float64; entry ``[r, g]`` is group ``g``'s sum, 0 for ``g >= n_groups[r]``.
    """
    rows, n = ranked.order.shape
    w = weights.double().reshape(n, -1)
    offsets = torch.arange(rows, device=ranked.group.device).unsqueeze(1) * n  # row r owns slots r*n..r*n+n-1
    out = torch.zeros(rows * n, w.shape[1], dtype=torch.float64, device=w.device)
    out.index_add_(0, (ranked.group + offsets).flatten(), w[ranked.order.flatten()])
    out = out.view(rows, n, w.shape[1])
    return out.squeeze(-1) if weights.ndim == 1 else out


def auroc_from_groups(gp: torch.Tensor, gn: torch.Tensor, n_pos: float, n_neg: float,
                      gn_cumsum: torch.Tensor | None = None) -> torch.Tensor:
    """Mann-Whitney AUROC, ties counted one half, from tie-group counts in ascending score order.

    Args:
        gp, gn: (R, G) positive and negative pixels per tie group (zero groups allowed anywhere).
        n_pos, n_neg: totals, both > 0.
        gn_cumsum: ``torch.cumsum(gn, -1)`` where the caller has it already.

    Returns:
        (R,) float64.
    """
    neg_below = (gn_cumsum if gn_cumsum is not None else torch.cumsum(gn, dim=-1)) - gn
    pairs = 0.5 * gn
    pairs += neg_below  # in place: neg_below + 0.5 gn, then times gp (sums and products commute), fewer buffers
    pairs *= gp
    return pairs.sum(-1) / (n_pos * n_neg)


def auroc_counts(scores: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC where item ``i`` stands for ``pos[i]`` positive and ``neg[i]`` negative pixels.

    This is the Mann-Whitney U statistic with ties counted one half. With nearest
    upsampling every pixel copies one grid cell, so scoring the grid with per-cell pixel
    counts gives exactly the pixel AUROC at a fraction of the cost.

    Args:
        scores: float, (..., n).
        pos: non-negative counts, (n,).
        neg: non-negative counts, (n,).

    Returns:
        float, (...,); NaN where there are no positives or no negatives (undefined).
    """
    lead, n = scores.shape[:-1], scores.shape[-1]
    if pos.shape != (n,) or neg.shape != (n,):
        raise ValueError(f"auroc_counts: scores end with {n} items, counts are {tuple(pos.shape)} and {tuple(neg.shape)}")
    pos, neg = pos.double(), neg.double()
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full(lead, float("nan"))
    ranked = rank_rows(scores.reshape(-1, n).double())
    g = group_sums(ranked, torch.stack([pos, neg], dim=1))
    return auroc_from_groups(g[..., 0], g[..., 1], n_pos, n_neg).float().reshape(lead)


def auroc(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel AUROC of ``scores`` for the binary ``target``; equals scikit-learn's ``roc_auc_score``.

    Args:
        scores: float, (..., H, W) (any trailing shape equal to ``target``'s).
        target: bool, (H, W).

    Returns:
        float, (...,); NaN where the target is all positive or all negative (undefined).
    """
    if scores.shape[scores.ndim - target.ndim:] != target.shape:
        raise ValueError(f"auroc: scores {tuple(scores.shape)} do not end with target shape {tuple(target.shape)}")
    t = target.reshape(-1).bool()
    flat = scores.reshape(*scores.shape[: scores.ndim - target.ndim], -1)
    return auroc_counts(flat, t.double(), (~t).double())
