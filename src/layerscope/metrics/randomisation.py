"""Model-parameter randomisation (MPRT) and Random Logit: does a map depend on what the model learned?

Adebayo et al. 2018 ("Sanity checks for saliency maps") recompute a method's maps with the model's
weights re-initialised and compare them with the trained model's: a map that barely changes shows the
input (its edges), not the model. ``metrics.randomisation``:

- ``cascading``: every module with ``reset_parameters`` re-initialised, from the output down (the
  paper's cascade; Quantus' ``top_down`` order). The columns report **full randomisation**, the last
  step of the cascade (every such module re-initialised): one extra pass per batch for every layer.
- ``independent``: for the map of layer l, only layer l's block (its modules with ``reset_parameters``)
  re-initialised, the rest trained: one extra pass per requested layer.

Re-initialisation: the modules in reverse ``named_modules`` order, each reset by its own
``reset_parameters``, seeded by ``metrics.randomisation_seeding``:

- ``per_module`` (default; Quantus 0.6, ``PyTorchModel.get_random_layer_generator``):
  ``torch.manual_seed(seed + 1)`` right before each module, so modules of the same shape (a ViT's
  blocks) all get the same random weights;
- ``once`` (Adebayo et al. 2018: each layer re-initialised with its own random draw):
  ``torch.manual_seed(seed + 1)`` once, then every module draws from that one stream.

Parameters no module resets (a ViT's class token and position
embedding, DINOv2's layer scale) stay trained. The global random state is left as it was and the
weights are restored exactly (the ``state_dict`` bit for bit) on leaving.

Similarities, per map, between the trained map ``a`` and the randomised one ``b``, both taken as
``|m| / max |m|`` (Quantus' defaults ``abs=True``, ``normalise_by_max``):

- ``mprt_spearman``: Spearman rank correlation over the cells (average ranks for ties);
- ``mprt_ssim``: SSIM (Wang et al. 2004) as scikit-image computes it with Quantus' arguments: a uniform
  ``7 x 7`` window (the largest odd side that fits on a smaller grid; none below 3 x 3: NaN), sample covariances,
  ``K1 = 0.01``, ``K2 = 0.03``, data range ``max - min`` over both maps, averaged over the windows
  inside the grid;
- ``random_logit_ssim`` (Sixt et al. 2020, "When explanations lie"), for gradient methods of a model with
  a classifier: SSIM between the map for the target class and the map for a random other class. The
  class is drawn as Quantus 0.6's ``RandomLogit`` draws it: per batch, ``numpy.random.RandomState(seed)``'s
  ``randint(0, C - 1, B)`` indexes each image's classes other than its target, in ascending order.
  ``metrics.random_logit_rule`` says how the two maps are compared:

  - ``image`` (default; Sixt et al. 2020, who compare the maps as images, after Adebayo et al. 2018):
    each map as ``|m| / max |m|``, the 2-D SSIM above;
  - ``quantus`` (Quantus 0.6 ``RandomLogit``'s defaults): signed maps divided by the largest ``|m|`` over
    the batch (so a map's value depends on the other images of its batch), SSIM of each map flattened
    row-major to a 1-D signal (a 7-cell window that runs across row ends).

The report and the page flag a map as not depending on the learned weights when its mean
``mprt_spearman`` over images is at least ``FLAG`` (0.5: trained and randomised maps still rank the
cells alike; Adebayo et al. read rank correlations of this size as a failed test).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("none", "cascading", "independent")
LOGIT_RULES = ("image", "quantus")  # metrics.random_logit_rule
SEEDINGS = ("per_module", "once")  # metrics.randomisation_seeding
SSIM_WINDOW = 7  # scikit-image's default window side
FLAG = 0.5  # a map whose mean mprt_spearman is at or above it is flagged (report, page)


def resettable(module: nn.Module) -> list[nn.Module]:
    """The modules below (and including) ``module`` that re-initialise themselves, in reverse
    ``named_modules`` order (from the output down)."""
    return [m for _, m in module.named_modules() if callable(getattr(m, "reset_parameters", None))][::-1]


@contextmanager
def randomised(model: nn.Module, modules: Sequence[nn.Module], seed: int = 0, seeding: str = "per_module"
               ) -> Iterator[nn.Module]:
    """Within the block, ``modules`` (parts of ``model``) are re-initialised; on leaving, ``model``'s
    weights are restored bit for bit and the global random state is as before.

    Args:
        model: the whole model (its ``state_dict`` is saved and restored).
        modules: the modules to reset, in order.
        seed: the randomisation seed.
        seeding: ``per_module`` (``torch.manual_seed(seed + 1)`` before each module; Quantus 0.6) or ``once``
            (before the first; the modules draw in turn from one stream).

    Raises:
        ValueError: an unknown seeding, naming ``metrics.randomisation_seeding``.

    Yields:
        ``model``.
    """
    if seeding not in SEEDINGS:
        raise ValueError(f"metrics.randomisation_seeding={seeding}: expected one of {', '.join(SEEDINGS)}")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            for i, m in enumerate(modules):
                if seeding == "per_module" or i == 0:
                    torch.manual_seed(int(seed) + 1)
                m.reset_parameters()
        yield model
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)  # copies into the same tensors: exact


def randomised_maps(model: nn.Module, compute: Callable[[list[int]], dict[int, torch.Tensor]], layers: Sequence[int],
                    mode: str, blocks: Callable[[int], nn.Module] | None = None, seed: int = 0,
                    seeding: str = "per_module") -> dict[int, torch.Tensor]:
    """The maps of ``layers`` recomputed under randomised weights.

    Args:
        model: the model (restored on return).
        compute: layers -> (layer -> maps) with the model as it is now; called once (``cascading``) or once per
            layer (``independent``, with that one layer).
        layers: the requested layers.
        mode: ``cascading`` (full randomisation) or ``independent`` (each layer's own block).
        blocks: layer -> its block module (``independent`` only).
        seed: randomisation seed.
        seeding: ``per_module`` or ``once`` (``randomised``).

    Returns:
        layer -> maps as ``compute`` returns them.

    Raises:
        ValueError: an unknown mode, naming ``metrics.randomisation``.
    """
    if mode == "cascading":
        with randomised(model, resettable(model), seed, seeding):
            return compute(list(layers))
    if mode == "independent":
        if blocks is None:
            raise ValueError("metrics.randomisation=independent needs each layer's block")
        out = {}
        for layer in layers:
            with randomised(model, resettable(blocks(layer)), seed, seeding):
                out[layer] = compute([layer])[layer]
        return out
    raise ValueError(f"metrics.randomisation={mode}: expected one of {', '.join(MODES)}")


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """``|m| / max |m|`` per map (Quantus' ``abs`` and ``normalise_by_max``): (..., h, w) float64; an all-zero
    map stays 0."""
    a = maps.double().abs()
    top = a.flatten(-2).amax(-1)[..., None, None]
    return torch.where(top > 0, a / top.clamp_min(1e-300), a)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) along the last dim, ties sharing their mean rank: (..., n) -> (..., n) float64."""
    n = x.shape[-1]
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    new = torch.ones_like(sorted_x, dtype=torch.bool)
    new[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    group = new.long().cumsum(-1) - 1  # tie group of each sorted position
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(sorted_x)
    total = torch.zeros_like(pos).scatter_add_(-1, group, pos)
    count = torch.zeros_like(pos).scatter_add_(-1, group, torch.ones_like(pos))
    mean = (total / count.clamp_min(1)).gather(-1, group)
    return torch.empty_like(mean).scatter_(-1, order, mean)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: (..., h, w) x2 -> (...) float64; NaN for a constant map."""
    ra, rb = _ranks(a.flatten(-2).double()), _ranks(b.flatten(-2).double())
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(-1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def _odd_window(window: int, *sides: int) -> int:
    """The largest odd window side <= ``window`` that fits every side."""
    return min(window, *(n if n % 2 else n - 1 for n in sides))


def _ssim_windows(x: torch.Tensor, y: torch.Tensor, win: int) -> torch.Tensor:
    """Mean SSIM over the windows inside the signal, scikit-image's way (uniform window, sample covariances,
    ``K1 = 0.01``, ``K2 = 0.03``, data range ``max - min`` over both signals).

    Args:
        x, y: (N, 1, h, w) or (N, 1, n) float64 signals.
        win: odd window side (``win x win`` on a grid, ``win`` on a 1-D signal).

    Returns:
        (N,) float64.
    """
    both = torch.cat([x, y], 1).flatten(1)
    data_range = both.amax(1) - both.amin(1)  # Quantus: over the two maps together
    shape = (-1,) + (1,) * (x.dim() - 1)
    c1, c2 = ((0.01 * data_range) ** 2).view(shape), ((0.03 * data_range) ** 2).view(shape)
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool1d
    mean = lambda t: pool(t, win, stride=1)  # noqa: E731 - the windows inside the signal (skimage's crop)
    ux, uy = mean(x), mean(y)
    n = win ** (x.dim() - 2)
    cov = n / (n - 1)  # sample covariance
    vx, vy, vxy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy), cov * (mean(x * y) - ux * uy)
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean SSIM of each pair of maps as scikit-image's ``structural_similarity`` with Quantus' data range.

    Args:
        a, b: (..., h, w) maps.
        window: odd window side; shrunk to the largest odd side that fits the grid.

    Returns:
        (...) float64; NaN where both maps are constant and equal (zero data range), and on a grid with a side
        under 3 cells.
    """
    h, w = a.shape[-2:]
    win = _odd_window(window, h, w)
    if win < 3:  # a 1- or 2-cell side holds no window with a sample variance
        return torch.full(a.shape[:-2], float("nan"), dtype=torch.float64, device=a.device)
    x, y = a.double().reshape(-1, 1, h, w), b.double().reshape(-1, 1, h, w)
    return _ssim_windows(x, y, win).view(a.shape[:-2])


def ssim_flat(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """SSIM of each pair of maps flattened row-major to 1-D signals, as Quantus 0.6's ``RandomLogit`` computes
    it (``structural_similarity`` of the ``h * w`` vectors).

    Args:
        a, b: (..., h, w) maps.
        window: odd window length; shrunk to the largest odd length that fits ``h * w``.

    Returns:
        (...) float64; NaN where both maps are constant and equal, and on fewer than 3 cells.
    """
    n = a.shape[-2] * a.shape[-1]
    win = _odd_window(window, n)
    if win < 3:
        return torch.full(a.shape[:-2], float("nan"), dtype=torch.float64, device=a.device)
    x, y = a.double().reshape(-1, 1, n), b.double().reshape(-1, 1, n)
    return _ssim_windows(x, y, win).view(a.shape[:-2])


def similarities(trained: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Spearman, SSIM) of ``normalise``d map pairs: (..., h, w) x2 -> two (...) float64."""
    a, b = normalise(trained), normalise(other)
    return spearman(a, b), ssim(a, b)


def other_classes(target: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """A uniformly drawn class other than each image's target, as Quantus 0.6's ``RandomLogit`` draws it.

    ``numpy.random.RandomState(seed).randint(0, num_classes - 1, B)`` (the stream of Quantus'
    ``np.random.seed(seed)``, without touching numpy's global state) indexes each image's classes other than
    its target, in ascending order. Drawn afresh per call (per batch), as Quantus does per batch.

    Args:
        target: (B,) class per image.
        num_classes: the classifier's classes (>= 2).
        seed: the draw's seed.

    Returns:
        (B,) int64 on the CPU.
    """
    draw = np.random.RandomState(int(seed)).randint(0, num_classes - 1, len(target))
    draw = torch.from_numpy(draw.astype(np.int64))
    t = target.cpu().long()
    return torch.where(draw >= t, draw + 1, draw)  # the draw-th class once the target is left out


def batch_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Quantus' ``normalise_by_max`` on a batch: signed maps divided by the largest ``|m|`` over the batch
    (dim 0 and the grid), separately per map index of the other dims; all-zero stays 0.

    Args:
        maps: (B, ..., h, w).

    Returns:
        (B, ..., h, w) float64.
    """
    a = maps.double()
    top = a.abs().amax(-1, keepdim=True).amax(-2, keepdim=True).amax(0, keepdim=True)
    return torch.where(top > 0, a / top.clamp_min(1e-300), a)


def logit_similarity(trained: torch.Tensor, other: torch.Tensor, rule: str = "image") -> torch.Tensor:
    """``random_logit_ssim``: the SSIM of each map with the map of another class (``metrics.random_logit_rule``).

    Args:
        trained: (B, ..., h, w) maps for the target class; the batch is dim 0 (``quantus`` normalises over it).
        other: (B, ..., h, w) maps for the drawn other class.
        rule: ``image`` (per map ``|m| / max |m|``, 2-D SSIM; Sixt et al. 2020) or ``quantus`` (signed,
            divided by the batch's largest ``|m|``, SSIM of the row-major flattened maps; Quantus 0.6).

    Returns:
        (B, ...) float64.

    Raises:
        ValueError: an unknown rule, naming ``metrics.random_logit_rule``.
    """
    if rule == "image":
        return ssim(normalise(trained), normalise(other))
    if rule == "quantus":
        return ssim_flat(batch_normalise(trained), batch_normalise(other))
    raise ValueError(f"metrics.random_logit_rule={rule}: expected one of {', '.join(LOGIT_RULES)}")
