"""The pixels each threshold keeps and the tie groups the rank metrics sum over, for a batch of maps.

A batch of B images' R maps on one grid is one ``(B x R, n)`` block: one sort per map serves every threshold
(a binary search in the sorted levels, then prefix sums of the pixel counts) and every rank metric (AUROC,
AUPRO, oracle IoU: sums of pixel counts over tie groups), each row with its own image's pixel counts.
On a CPU, NumPy's sort is used where it is exact (``sort_rows``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .bools import any_true
from .rank_groups import Ranked


def kept_pixels(flat: torch.Tensor, thresholds: Sequence[float], rule: str, pos: torch.Tensor,
                       neg: torch.Tensor, shortcuts: bool = True) -> tuple[torch.Tensor, torch.Tensor, Ranked]:
    """Mask and background pixels each threshold keeps, for B images' maps at once, each image with its own
    pixel counts, from one sort of each map.

    The kept set is exactly ``methods.threshold_maps(maps, t, rule)``'s: the same shift, the same order of
    tied values (``torch.sort``'s where a cut falls between equal values), the same float arithmetic in the
    maps' dtype. Both rules keep the top of the sorted order, so each threshold is a count of kept cells and a
    lookup in prefix sums of the pixel counts.

    Args:
        flat: (B, R, n) maps in their own dtype.
        pos, neg: (B, n) mask and background pixels per cell.
        shortcuts: NumPy's sort where it is exact (``sort_rows``).

    Returns:
        (inter, kept_neg, ranked): (B, R, T) float64 pixel counts; the (B x R, n) rows ranked as the
        rank metrics of each image need them, with the maps' sorted values (the maps themselves: a shift may
        merge ties; where an image has a signed map, a row with three or more equal values in ``torch.sort``'s
        order of its float64 values).
    """
    b, r, n = flat.shape
    rows = flat.reshape(b * r, n)
    # one sort of the maps themselves serves both: shifting is monotone, so the maps' ascending order also sorts
    # the shifted maps, whose sorted values are then the sorted maps shifted (any ascending order of a row gives
    # the same sequence of values: the level sums and the cuts are the threshold's own)
    ranked_values, order, ties, own_rank = sort_rows(rows, shortcuts)
    ranked_order, own = order, own_rank
    if rule == "keep_mass":
        low = rows.amin(dim=-1, keepdim=True)
        shift = (low < 0).squeeze(-1)  # as keep_mass_maps: signed maps start at 0
        signed = shift.view(b, r).any(1)  # per image: its rank metrics then sort a row's ties in float64
        # a shifted copy only where a map is signed (a broken row below is one: ranked_values is never written)
        values = torch.where(shift.unsqueeze(-1), ranked_values - low, ranked_values) if bool(shift.any()) \
            else ranked_values
        own = own_rank & ~shift  # a shifted row's order is not torch.sort's of its shifted values
        broken = torch.nonzero(low.squeeze(-1) == float("-inf")).flatten()  # -inf - -inf is NaN, which sorts last
        if broken.numel():
            order = order.clone()
            values[broken], order[broken] = torch.sort(rows[broken] - low[broken], dim=-1)
            own[broken] = True
    else:
        values = ranked_values
        signed = torch.zeros(b, dtype=torch.bool, device=flat.device)
    # where every (shifted) value is finite, the levels are too and rise along the sorted order: a cumulative sum
    # of non-negative shares, or a non-negative affine map of sorted values; only a map without mass (0 / 0) has
    # NaN levels. Elsewhere both are checked
    if rule == "keep_mass":
        total = values.sum(dim=-1, keepdim=True)
        level = (values / total).cumsum_(-1)  # summed in place: the same running sum, one buffer fewer
        cut = torch.tensor([1 - t for t in thresholds], dtype=level.dtype, device=flat.device)
        finite = bool(torch.isfinite(low).all()) and bool(torch.isfinite(values[:, -1]).all())  # NaN sorts last
        empty = (total == 0).squeeze(-1) if finite else level.isnan().all(-1)
        gate = ~empty
    else:
        low, high = rows.amin(-1, keepdim=True), rows.amax(-1, keepdim=True)
        level = (values - low) / (high - low).clamp_min(torch.finfo(rows.dtype).tiny)
        cut = torch.tensor(list(thresholds), dtype=level.dtype, device=flat.device)
        finite = bool(torch.isfinite(high - low).all())
        empty = torch.zeros(b * r, dtype=torch.bool, device=flat.device)
        gate = (high > low).squeeze(-1)
    if bool(empty.any()):
        level = torch.where(empty.unsqueeze(-1), torch.zeros_like(level), level)
    # pixel counts are small integers: int32 sums are exact (and the same numbers as float64's)
    counts = torch.stack([pos, neg], -1).to(torch.int32)  # (B, n, 2)
    monotone = finite or (not bool(level.isnan().any()) and bool((level[:, 1:] >= level[:, :-1]).all()))
    if monotone:
        above = n - torch.searchsorted(level, cut.expand(b * r, -1).contiguous(), right=True)
        start = torch.where(gate.unsqueeze(-1), n - above, n)  # (B x R, T) first kept position
        inside = (start > 0) & (start < n)
        before = values.gather(1, (start - 1).clamp(0, n - 1))
        at = values.gather(1, start.clamp(0, n - 1))
        redo = ~own & (inside & (before == at)).any(-1)  # a cut between two equal cells: torch.sort's order decides
    else:
        start, redo = None, ~own
    if bool(redo.any()):
        index = torch.nonzero(redo).flatten()
        order = order.clone() if order is ranked_order else order  # the rank metrics keep theirs
        sorted_rows = rows[index]
        if rule == "keep_mass":
            sorted_rows = torch.where(shift[index].unsqueeze(-1), sorted_rows - low[index], sorted_rows)
        order[index] = torch.sort(sorted_rows, dim=-1).indices  # the same values: only the order of ties changes
    sorted_counts = in_sorted_order(counts, order)  # (B x R, n, 2) each row's pixels in its sorted order
    if monotone:
        # every threshold keeps a top block of the sorted order, whose size one binary search found
        prefix = sorted_counts.cumsum_(1)  # (B x R, n, 2) int32, in place (the sorted counts are not read again)
        below = prefix.gather(1, (start - 1).clamp_min(0).unsqueeze(-1).expand(-1, -1, 2))  # the cells before start
        kept = (prefix[:, -1:] - torch.where((start > 0).unsqueeze(-1), below, 0)).double()
    else:  # NaN or infinite values somewhere in the batch: cell by cell, as the threshold does
        keep = (level.unsqueeze(1) > cut.view(1, -1, 1)) & gate.view(-1, 1, 1) & ~empty.view(-1, 1, 1)
        kept = torch.einsum("rtn,rnc->rtc", keep.double(), sorted_counts.double())
    # the rank metrics' order: a redone row changed only the order of pairs (sums over a pair commute). An image
    # with a signed map ranks a row holding three or more equal values (or a NaN) by its float64 values
    again = signed.repeat_interleave(r) & ties & own_rank
    ranked = _ranked(ranked_values, ranked_order, ties)
    if bool(again.any()):
        values64, order64 = torch.sort(rows[again].double(), dim=-1)
        redone = Ranked.from_sorted(values64, order64)
        order_all, group_all = ranked.order.clone(), ranked.group.clone()
        order_all[again], group_all[again] = redone.order, redone.group
        ranked = Ranked(order_all, group_all, group_all[:, -1] + 1)
    ranked.values = ranked_values  # the same ascending sequence of values whichever order sorted a row
    t = len(thresholds)
    return kept[..., 0].view(b, r, t), kept[..., 1].view(b, r, t), ranked


def sort_rows(x: torch.Tensor, shortcuts: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.sort(x, dim=-1)``'s values, and a permutation that sorts them, faster on a CPU.

    A row without ties has one ascending permutation, which NumPy's vectorised sort finds in less than
    half ``torch.sort``'s time. Large maps often hold a few pairs of equal values (float32 collisions):
    such rows keep NumPy's order too, which may list a pair the other way round from ``torch.sort``. That
    changes nothing a sum over the pair computes (addition commutes), so only a threshold cutting between
    the two needs ``torch.sort``'s order (``kept_pixels`` redoes those rows). Rows with three or
    more equal values, or a NaN, are sorted by ``torch.sort`` itself.

    Args:
        x: (R, n) float.
        shortcuts: use NumPy (on a CPU); False: ``torch.sort`` alone.

    Returns:
        (values, order, ties, own): (R, n) each; (R,) bool rows holding equal values (or a NaN); (R,)
        bool rows whose order is ``torch.sort``'s own.
    """
    if not shortcuts or x.device.type != "cpu" or x.ndim != 2 or x.shape[-1] < 3:
        values, order = torch.sort(x, dim=-1)
        equal = values[:, 1:] == values[:, :-1]
        return values, order, equal.any(-1) | values[:, -1].isnan(), torch.ones(x.shape[0], dtype=torch.bool,
                                                                                 device=x.device)
    order = torch.from_numpy(np.argsort(x.numpy(), axis=-1))
    values = x.gather(-1, order)
    equal = values[:, 1:] == values[:, :-1]
    nan = values[:, -1].isnan()  # NaN sorts last in both
    own = any_true(equal[:, 1:] & equal[:, :-1], -1) | nan
    if bool(own.any()):
        rows = torch.nonzero(own).flatten()
        values[rows], order[rows] = torch.sort(x[rows], dim=-1)
    return values, order, any_true(equal, -1) | nan, own


def in_sorted_order(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each row's per-cell values in its sorted order: values (B, n, C) of the rows' images, order (B x R, n)
    -> (B x R, n, C). One gather of whole C-vectors (row r belongs to image r // R); C-vectors of 8 bytes (two
    int32 counts) are gathered as one int64 each, several times faster."""
    b, n, c = values.shape
    r = order.shape[0] // b
    base = (torch.arange(b, device=order.device) * n).repeat_interleave(r).unsqueeze(1)
    index = (order + base).flatten()
    if c * values.element_size() == 8 and values.dtype != torch.int64:
        packed = values.reshape(b * n, c).contiguous().view(torch.int64).flatten()
        return packed.index_select(0, index).view(values.dtype).view(b * r, n, c)
    return values.reshape(b * n, c).index_select(0, index).view(b * r, n, c)


def _ranked(values: torch.Tensor, order: torch.Tensor, ties: torch.Tensor) -> Ranked:
    """``Ranked.from_sorted`` where only the rows with ties (``ties``, (R,) bool) need their groups counted: a
    row without ties has one item per group (its groups are its positions, as counting finds them). Where at
    least half the rows have ties (large grids: float collisions), every row is counted, in place."""
    rows, n = values.shape
    tied = torch.nonzero(ties).flatten()
    positions = torch.arange(n, device=values.device)
    if tied.numel() == 0:
        return Ranked(order, positions.expand(rows, n), torch.full((rows,), n, device=values.device))
    if 2 * tied.numel() >= rows:
        return Ranked.from_sorted(values, order)
    counted = Ranked.from_sorted(values[tied], order[tied])
    group = positions.repeat(rows, 1)
    group[tied] = counted.group
    n_groups = torch.full((rows,), n, device=values.device)
    n_groups[tied] = counted.n_groups
    return Ranked(order, group, n_groups)


def in_sorted_order_channels(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``in_sorted_order`` with the channels first: values (C, B, n), order (B x R, n) -> (C, B x R, n).

    One gather along the cells of the (C, B n) channels (NumPy's ``take`` on a CPU: about twice as fast).
    """
    c, b, n = values.shape
    r = order.shape[0] // b
    base = (torch.arange(b, device=order.device) * n).repeat_interleave(r).unsqueeze(1)
    index = (order + base).flatten()
    channels = values.reshape(c, b * n).contiguous()
    if values.device.type == "cpu":
        return torch.from_numpy(np.take(channels.numpy(), index.numpy(), axis=1)).view(c, b * r, n)
    return channels.index_select(1, index).view(c, b * r, n)


def group_sums_per_row(ranked: Ranked, weights: torch.Tensor) -> torch.Tensor:
    """Sums of each row's own image's weights over its tie groups, each at its group's last sorted position:
    (B x R, n) ranked rows, weights (C, B, n) -> (C, B x R, n) float64, channels first (each contiguous, as
    the rank metrics read it).

    This is ``rank_groups.group_sums`` before it closes the sums up to the row's front (``close_up``), which
    leaves every sum where it was computed: a row without ties (one item per group) is its weights in sorted
    order (0 + w is w: the weights are counts and shares, never -0.0), and a row with ties (float32 collisions:
    few) changes only at its tied items. A group's items are added in sorted order, first to last, as
    ``index_add_`` adds them (the same bits); its other items then hold 0.
    """
    w = in_sorted_order_channels(weights.double(), ranked.order)  # (C, B x R, n)
    n = ranked.order.shape[1]
    tied, row, pos = ranked.joined  # the items followed by one of their group
    if tied.numel() == 0:
        return w
    row = tied[row]
    # each such item's depth in its run of joined items (row-major: ascending positions within a row)
    index = torch.arange(row.numel(), device=w.device)
    chained = torch.zeros(row.numel(), dtype=torch.bool, device=w.device)
    chained[1:] = (row[1:] == row[:-1]) & (pos[1:] == pos[:-1] + 1)
    depth = index - torch.cummax(torch.where(chained, 0, index), 0).values
    longest = int(depth.max()) + 1
    if longest > _LONGEST_CHAIN:  # a long tie group (a flat region): one index_add_ for the tied rows
        c, t, group = w.shape[0], tied.numel(), ranked.group[tied]
        offsets = torch.arange(t, device=w.device).unsqueeze(1) * n
        sums = torch.zeros(t * n, c, dtype=torch.float64, device=w.device)
        sums.index_add_(0, (group + offsets).flatten(), w[:, tied].permute(1, 2, 0).reshape(-1, c))
        ends = torch.ones_like(group, dtype=torch.bool)
        ends[:, :-1] = group[:, 1:] != group[:, :-1]
        spread = torch.zeros(c, t, n, dtype=torch.float64, device=w.device)
        spread[:, ends] = sums.view(t, n, c).permute(2, 0, 1)[:, torch.arange(n, device=w.device) <
                                                                ranked.n_groups[tied].unsqueeze(1)]
        w[:, tied] = spread
        return w
    for d in range(longest):  # the sum so far moves on to the next item of its group
        at = depth == d
        w[:, row[at], pos[at] + 1] += w[:, row[at], pos[at]]
    w[:, row, pos] = 0.0
    return w


# the longest run of tied items summed item by item (one vectorised step per item) before ``index_add_`` is used
_LONGEST_CHAIN = 16


def close_up(values: torch.Tensor, width: int, ranked: Ranked) -> torch.Tensor:
    """Per-group values at their groups' last sorted positions (``group_sums_per_row``'s layout), listed from the
    highest item, moved into ``group_sums``' layout listed from the highest: each row's zero groups first, then
    its groups from the highest down (AUPRO's segments, whose sum must see them where ``group_sums`` puts them).

    Args:
        values: (B x R, n), ``values[:, s]`` for item ``n - 1 - s``: each group's value at its last item, zero
            at its other items, and zero from column ``width`` on.
        width: as above.
        ranked: the rows' ranking.

    Returns:
        ``values``, its rows with ties rewritten.
    """
    n = values.shape[1]
    tied, row, pos = ranked.joined  # the items a group's sum left (zero)
    if tied.numel() == 0 or width == 0:
        return values
    left = n - 1 - pos  # their columns
    # a column moves right by the items left at columns after it (they close up behind the groups)
    joined = torch.zeros(tied.numel(), width + 1, dtype=torch.long, device=values.device)
    joined.index_put_((row, left.clamp_max(width)), torch.ones_like(row), accumulate=True)
    after = (ranked.n_groups[tied] - n).neg().unsqueeze(1) - torch.cumsum(joined[:, :width], 1)
    moved = torch.zeros(tied.numel(), n + 1, dtype=values.dtype, device=values.device)
    target = torch.arange(width, device=values.device) + after
    target[row[left < width], left[left < width]] = n  # the items left hold zeros: dropped at column n
    moved.scatter_(1, target, values[tied, :width])
    values[tied] = moved[:, :n]
    return values
