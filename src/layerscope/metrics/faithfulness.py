"""Faithfulness of maps to a classifier: deletion and insertion AUC (Petsiuk et al. 2018, RISE).

A map orders its grid cells from most to least relevant. **Deletion** replaces the most relevant
cells first by a baseline image and records the target class probability after each step;
**insertion** starts from the baseline and reveals the most relevant cells first. The AUC is the
trapezoid area under probability vs fraction of cells removed (revealed), in [0, 1]: a lower
deletion AUC and a higher insertion AUC mean a more faithful map.

Baselines (both commute with a per-channel affine normalisation, so the input may be in RGB or in
the model's normalised space):

- ``blur``: a Gaussian blur of the image, sigma = ``img_side / 32`` pixels (7 px at 224) unless
  given, truncated at 3 sigma, reflect padding (RISE blurs too, with a weaker kernel);
- ``mean``: each image's mean colour, per channel.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

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


@torch.no_grad()
def deletion_insertion(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, maps: torch.Tensor,
                       target: torch.Tensor, steps: int = 10, baseline: str = "blur", batch_size: int = 16,
                       softmax: bool = True, blur_sigma: float | None = None) -> torch.Tensor:
    """Deletion and insertion AUC of every map of a batch.

    Cells are ranked by map value, highest first (ties: raster order). Step ``i`` of ``steps``
    removes (reveals) the first ``round(i n / steps)`` of the n cells, each cell covering its
    nearest-upsampled pixels; the curve is the target class probability at the ``steps + 1``
    points, integrated over the fraction of cells in [0, 1]. The unperturbed image and the
    baseline are evaluated once per image; the perturbed ones in batches of ``batch_size``.

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

    Returns:
        (B, K, 2) float32: [..., 0] deletion AUC (lower = more faithful), [..., 1] insertion AUC.

    Raises:
        ValueError: a bad ``steps`` or ``baseline``, naming the option, or mismatched shapes.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"metrics.faithfulness_steps={steps!r}: expected an int >= 1")
    if x.ndim != 4 or maps.ndim != 4 or maps.shape[0] != x.shape[0] or target.shape != (x.shape[0],):
        raise ValueError(f"deletion_insertion: expected x (B, 3, H, W), maps (B, K, h, w), target (B,); got "
                         f"{tuple(x.shape)}, {tuple(maps.shape)}, {tuple(target.shape)}")
    b, k, h, w = maps.shape
    size = tuple(x.shape[-2:])
    base = baseline_image(x, baseline, blur_sigma)
    target = target.long().to(x.device)

    def prob(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        out = forward(images).float()
        out = out.softmax(-1) if softmax else out
        return out.gather(1, classes[:, None])[:, 0].cpu()

    n = h * w
    order = maps.reshape(b, k, n).float().argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=order.device).expand_as(order))
    counts = removal_counts(n, steps).to(rank.device)
    curves = torch.empty(2, b, k, steps + 1)  # (deletion/insertion, B, K, step)
    p_x, p_base = prob(x, target), prob(base, target)
    curves[0, ..., 0] = curves[1, ..., -1] = p_x[:, None]  # nothing deleted / everything revealed
    curves[0, ..., -1] = curves[1, ..., 0] = p_base[:, None]
    if steps > 1:
        # every intermediate (mode, image, map, step), flattened; images are built one batch at a time
        mode, bi, ki, si = torch.meshgrid(torch.arange(2), torch.arange(b), torch.arange(k), torch.arange(1, steps),
                                          indexing="ij")
        mode, bi, ki, si = (t.reshape(-1) for t in (mode, bi, ki, si))
        values = torch.empty(mode.numel())
        for start in range(0, mode.numel(), batch_size):
            sl = slice(start, start + batch_size)
            m_, b_, k_, s_ = mode[sl], bi[sl], ki[sl], si[sl]
            chosen = rank[b_.to(rank.device), k_.to(rank.device)] < counts[s_.to(rank.device)][:, None]  # (c, n)
            cells = F.interpolate(chosen.view(-1, 1, h, w).float(), size=size, mode="nearest").bool()  # (c, 1, H, W)
            # deletion shows the baseline on the chosen cells; insertion shows the image there
            show_base = torch.where(m_.view(-1, 1, 1, 1).to(cells.device) == 0, cells, ~cells).to(x.device)
            b_dev = b_.to(x.device)
            images = torch.where(show_base, base[b_dev], x[b_dev])
            values[sl] = prob(images, target[b_dev])
        curves[mode, bi, ki, si] = values
    fraction = counts.double().cpu() / n
    return torch.trapezoid(curves.double(), x=fraction, dim=-1).float().permute(1, 2, 0).contiguous()


def check_faithfulness(cfg: Any, backbone: Any) -> None:
    """Check ``metrics.faithfulness*`` against the model before any weights load (call from the plan).

    Raises:
        ValueError: one line naming the option: a model without a classifier, steps < 2, an
            unknown baseline.
    """
    metrics = cfg.get("metrics") or {}
    if not metrics.get("faithfulness", False):
        return
    if not backbone.num_classes:
        raise ValueError(f"metrics.faithfulness needs a model with a classifier; model {backbone.name} has none "
                         "(use metrics.faithfulness=false)")
    steps = metrics.get("faithfulness_steps", 10)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:  # one step: deletion equals insertion
        raise ValueError(f"metrics.faithfulness_steps={steps!r}: expected an int >= 2 (with 1 step, deletion and "
                         "insertion see the same two images)")
    if metrics.get("faithfulness_baseline", "blur") not in BASELINES:
        raise ValueError(f"metrics.faithfulness_baseline={metrics.get('faithfulness_baseline')}: expected one of "
                         f"{', '.join(BASELINES)}")
