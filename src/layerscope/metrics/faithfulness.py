"""Faithfulness of maps to a classifier: deletion and insertion AUC (Petsiuk et al. 2018, RISE).

A map orders its grid cells from most to least relevant. **Deletion** replaces the most relevant
cells first by a baseline image and records the target class probability after each step;
**insertion** starts from the baseline and reveals the most relevant cells first. The AUC is the
trapezoid area under probability vs fraction of cells removed (revealed), in [0, 1]: a lower
deletion AUC and a higher insertion AUC mean a more faithful map.

Cells of equal value (the zeros of a ReLU'd CAM) have no order of their own, and which of them go
first moves the AUC (by 0.07-0.09 on EfficientNet's Grad-CAM). Where such a tie straddles a step,
the curve is the mean over ``tie_orders`` seeded random orders among the tied cells; a map without
one has a single curve, whatever the order.

Baselines (both commute with a per-channel affine normalisation, so the input may be in RGB or in
the model's normalised space):

- ``blur``: a Gaussian blur of the image, sigma = ``img_side / 32`` pixels (7 px at 224) unless
  given, truncated at 3 sigma, reflect padding (RISE blurs too, with a weaker kernel);
- ``mean``: each image's mean colour, per channel.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..config.schema import MetricsOptions

BASELINES = ("blur", "mean")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images (B, C, H, W), truncated at 3 sigma, reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)  # reflect padding needs pad < side
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def baseline_image(x: torch.Tensor, baseline: str, blur_sigma: float | None = None) -> torch.Tensor:
    """The image that removed cells show: (B, 3, H, W) -> (B, 3, H, W).

    Raises:
        ValueError: an unknown baseline, naming ``metrics.faithfulness_baseline``.
    """
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma if blur_sigma is not None else x.shape[-1] / 32)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    raise ValueError(f"metrics.faithfulness_baseline={baseline}: expected one of {', '.join(BASELINES)}")


def removal_counts(n: int, steps: int) -> torch.Tensor:
    """Cells removed (or revealed) after each of ``steps`` equal steps, from 0 to n: (steps + 1,) int64."""
    return torch.round(torch.linspace(0, n, steps + 1, dtype=torch.float64)).long()


def tie_orders_needed(maps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Which maps have cells of equal value on both sides of a step's cut: (..., n) -> (...) bool.

    Only those maps' curves depend on the order among equal values.
    """
    values = maps.sort(dim=-1, descending=True).values
    cuts = counts[(counts > 0) & (counts < maps.shape[-1])].to(values.device)
    if not cuts.numel():
        return torch.zeros(maps.shape[:-1], dtype=torch.bool, device=maps.device)
    return (values[..., cuts - 1] == values[..., cuts]).any(-1)


def cell_ranks(maps: torch.Tensor, order: int, seed: int = 0) -> torch.Tensor:
    """Rank of every cell, highest value first: (..., n) -> (..., n) int64.

    ``order`` 0 breaks ties in raster order; ``order`` t >= 1 by the seeded random permutation
    ``seed + t - 1`` of the cells (the same permutation for every map).
    """
    n = maps.shape[-1]
    if order == 0:
        perm = torch.arange(n, device=maps.device)
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + order - 1)).to(maps.device)
    idx = perm[maps[..., perm].argsort(dim=-1, descending=True, stable=True)]  # ties in the permutation's order
    return torch.empty_like(idx).scatter_(-1, idx, torch.arange(n, device=maps.device).expand_as(idx))


def check_perturbation(name: str, x: torch.Tensor, maps: torch.Tensor, target: torch.Tensor, tie_orders: int) -> None:
    """The checks every perturbation metric (deletion/insertion, ROAD) makes of its inputs: x (B, 3, H, W),
    maps (B, K, h, w), target (B,), and ``metrics.faithfulness_tie_orders`` an int >= 0.

    Raises:
        ValueError: naming ``name`` (or the option) and what it got.
    """
    if isinstance(tie_orders, bool) or not isinstance(tie_orders, int) or tie_orders < 0:
        raise ValueError(f"metrics.faithfulness_tie_orders={tie_orders!r}: expected an int >= 1 (or 0: raster order)")
    if x.ndim != 4 or maps.ndim != 4 or maps.shape[0] != x.shape[0] or target.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected x (B, 3, H, W), maps (B, K, h, w), target (B,); got "
                         f"{tuple(x.shape)}, {tuple(maps.shape)}, {tuple(target.shape)}")


@torch.no_grad()
def deletion_insertion(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, maps: torch.Tensor,
                       target: torch.Tensor, steps: int = 10, baseline: str = "blur", batch_size: int = 16,
                       softmax: bool = True, blur_sigma: float | None = None, tie_orders: int = 4,
                       seed: int = 0) -> torch.Tensor:
    """Deletion and insertion AUC of every map of a batch.

    Cells are ranked by map value, highest first. Step ``i`` of ``steps`` removes (reveals) the
    first ``round(i n / steps)`` of the n cells, each cell covering its nearest-upsampled pixels;
    the curve is the target class probability at the ``steps + 1`` points, integrated over the
    fraction of cells in [0, 1]. Where equal values straddle a step's cut, the AUC is the mean
    over ``tie_orders`` seeded random orders among them (``tie_orders=0``: raster order, one curve).
    The unperturbed image and the baseline are evaluated once per image; the perturbed ones in
    batches of ``batch_size``.

    Args:
        forward: a batch as ``x`` is given (B', 3, H, W) -> logits (B', C) (or probabilities
            with ``softmax=False``).
        x: the images, (B, 3, H, W), in the space ``forward`` takes (RGB or normalised).
        maps: (B, K, h, w) maps on their grid.
        target: (B,) class index per image.
        steps: number of steps, >= 1.
        baseline: ``blur`` or ``mean`` (see the module docstring).
        batch_size: perturbed images per ``forward`` call.
        softmax: apply a softmax to ``forward``'s output.
        blur_sigma: blur sigma in pixels (default: image side / 32).
        tie_orders: random orders averaged for maps with ties across a cut (>= 1), or 0 for raster order.
        seed: seed of the first random order.

    Returns:
        (B, K, 2) float32: [..., 0] deletion AUC (lower = more faithful), [..., 1] insertion AUC.

    Raises:
        ValueError: a bad ``steps``, ``tie_orders`` or ``baseline``, naming the option, or mismatched shapes.

    Example:
        >>> forward = lambda z: z.mean(dim=(2, 3))  # a "classifier" whose logits are the channel means
        >>> auc = deletion_insertion(forward, torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4), torch.tensor([0]))
        >>> tuple(auc.shape)
        (1, 2, 2)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"metrics.faithfulness_steps={steps!r}: expected an int >= 1")
    check_perturbation("deletion_insertion", x, maps, target, tie_orders)
    b, k, h, w = maps.shape
    size = tuple(x.shape[-2:])
    base = baseline_image(x, baseline, blur_sigma)
    target = target.long().to(x.device)

    def prob(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        out = forward(images).float()
        out = out.softmax(-1) if softmax else out
        return out.gather(1, classes[:, None])[:, 0].cpu()

    n = h * w
    flat = maps.reshape(b, k, n).float()
    counts = removal_counts(n, steps).to(flat.device)
    # variants: every map once, plus more tie orders for the maps whose curve depends on them
    first = 0 if tie_orders == 0 else 1
    ranks = [cell_ranks(flat, first, seed).reshape(b * k, n)]
    owner = [torch.arange(b * k)]
    tied = tie_orders_needed(flat, counts).reshape(-1).cpu() if tie_orders > 1 else torch.zeros(b * k, dtype=torch.bool)
    if tied.any():
        which = tied.nonzero()[:, 0]
        for order in range(2, tie_orders + 1):
            ranks.append(cell_ranks(flat.reshape(b * k, n)[which.to(flat.device)], order, seed))
            owner.append(which)
    rank, owner = torch.cat(ranks), torch.cat(owner)  # (V, n), (V,): the map (b * K + k) of each variant
    v_img = owner // k
    curves = torch.empty(2, rank.shape[0], steps + 1)  # (deletion/insertion, variant, step)
    p_x, p_base = prob(x, target), prob(base, target)
    curves[0, :, 0] = curves[1, :, -1] = p_x[v_img]  # nothing deleted / everything revealed
    curves[0, :, -1] = curves[1, :, 0] = p_base[v_img]
    if steps > 1:
        # every intermediate (mode, variant, step), flattened; images are built one batch at a time
        mode, vi, si = torch.meshgrid(torch.arange(2), torch.arange(rank.shape[0]), torch.arange(1, steps),
                                      indexing="ij")
        mode, vi, si = (t.reshape(-1) for t in (mode, vi, si))
        values = torch.empty(mode.numel())
        for start in range(0, mode.numel(), batch_size):
            sl = slice(start, start + batch_size)
            m_, v_, s_ = mode[sl], vi[sl], si[sl]
            chosen = rank[v_.to(rank.device)] < counts[s_.to(rank.device)][:, None]  # (c, n)
            cells = F.interpolate(chosen.view(-1, 1, h, w).float(), size=size, mode="nearest").bool()  # (c, 1, H, W)
            # deletion shows the baseline on the chosen cells; insertion shows the image there
            show_base = torch.where(m_.view(-1, 1, 1, 1).to(cells.device) == 0, cells, ~cells).to(x.device)
            b_dev = v_img[v_].to(x.device)
            images = torch.where(show_base, base[b_dev], x[b_dev])
            values[sl] = prob(images, target[b_dev])
        curves[mode, vi, si] = values
    fraction = counts.double().cpu() / n
    auc = torch.trapezoid(curves.double(), x=fraction, dim=-1)  # (2, V)
    total = torch.zeros(2, b * k, dtype=torch.float64).index_add_(1, owner, auc)
    used = torch.zeros(b * k, dtype=torch.float64).index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))
    return (total / used).float().view(2, b, k).permute(1, 2, 0).contiguous()


def check_faithfulness(metrics: MetricsOptions, backbone: Any) -> None:
    """Check the ``metrics.faithfulness*`` options against the model before any weights load (the plan calls it).

    Args:
        metrics: the run's ``metrics.*`` options.
        backbone: the model (its ``num_classes`` and ``name``).

    Raises:
        ValueError: one line naming the option: a model without a classifier, steps < 2, an
            unknown baseline.
    """
    if not metrics.faithfulness:
        return
    if not backbone.num_classes:
        raise ValueError(f"metrics.faithfulness needs a model with a classifier; model {backbone.name} has none "
                         "(use metrics.faithfulness=false)")
    if metrics.faithfulness_steps < 2:  # one step: deletion equals insertion
        raise ValueError(f"metrics.faithfulness_steps={metrics.faithfulness_steps!r}: expected an int >= 2 (with 1 "
                         "step, deletion and insertion see the same two images)")
    if metrics.faithfulness_tie_orders < 0:
        raise ValueError(f"metrics.faithfulness_tie_orders={metrics.faithfulness_tie_orders!r}: expected an int >= 1 "
                         "(or 0: raster order)")
    if metrics.faithfulness_baseline not in BASELINES:
        raise ValueError(f"metrics.faithfulness_baseline={metrics.faithfulness_baseline}: expected one of "
                         f"{', '.join(BASELINES)}")
