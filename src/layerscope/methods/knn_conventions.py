"""The parts of the few-shot patch k-NN map (``PatchKNN``): PatchCore and AnomalyDINO as functions with shapes.

Each function is one convention of a published method, named for what it does:

- ``local_average``: PatchCore's local p x p neighbourhood average of a feature map (Roth et al., CVPR 2022,
  Sec. 3.1; anomalib's ``AvgPool2d(3, 1, 1)``): zero padding, divisor p*p everywhere, so an edge patch's
  average includes the zeros outside the map.
- ``fuse``: PatchCore's ``layer2 + layer3``: feature maps brought to the finest grid among them (bilinear,
  ``align_corners=False``, as anomalib) and concatenated along channels, in the order given.
- ``greedy_coreset``: PatchCore's approximate greedy k-center (Sec. 3.2): a seeded Gaussian random projection
  to ``PROJECTION_DIM`` dimensions (Johnson-Lindenstrauss), a seeded first centre, then the point farthest from
  the chosen ones, ties to the lowest index.
- ``background_mask``: AnomalyDINO's masking (Damm et al., WACV 2025; anomalib 2.7's
  ``compute_background_masks``): first principal component of one image's patch features > threshold,
  the sign flipped when the central crop is mostly background, then a 3 x 3 dilation and a 3 x 3 closing.
- ``rotations``: AnomalyDINO's reference augmentation: each reference rotated by 0, 45, ..., 315 degrees.
- ``smooth``: the anomaly map at image size (nearest upsampling) convolved with a Gaussian of ``sigma``
  pixels, kernel ``2 int(4 sigma + 0.5) + 1``, reflect padding (anomalib's PatchCore/AnomalyDINO map generator).
- ``Bank`` / ``knn_search``: the search: chunked matmul against a bank whose squared norms are computed
  once, on the features' device, in fp32; the ``k + RECHECK`` fp32 nearest candidates are re-ranked with
  exact float64 distances, so near-ties that fp32 cancellation could reorder are decided exactly.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F

from ..runtime import one_thread

METRICS = ("euclidean", "cosine")
AGGREGATES = (1, 3, 5)
CORESETS = ("random", "greedy")
AUGMENTS = ("none", "rotations")
PROJECTION_DIM = 128  # PatchCore's reference code projects to 128 dimensions before the greedy search
RECHECK = 4  # extra fp32 candidates re-ranked exactly in float64
ROTATION_ANGLES = tuple(range(0, 360, 45))  # AnomalyDINO's augment_image: 0, 45, ..., 315 degrees


def local_average(t: torch.Tensor, p: int) -> torch.Tensor:
    """PatchCore's local aggregation: each cell the mean of its p x p neighbourhood.

    Args:
        t: (B, C, h, w) features.
        p: 1 (unchanged), 3 or 5.

    Returns:
        (B, C, h, w): zero padding, divided by p*p everywhere (``count_include_pad``), as anomalib.
    """
    if p == 1:
        return t
    return F.avg_pool2d(t, p, stride=1, padding=p // 2, count_include_pad=True)


def fuse(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate feature maps after bringing them to the finest grid among them.

    Args:
        features: (B, C_i, h_i, w_i) per layer, in the order of the fused candidate.

    Returns:
        (B, sum C_i, h, w) with (h, w) the largest grid (bilinear, ``align_corners=False``).
    """
    h, w = max((tuple(t.shape[-2:]) for t in features), key=lambda s: s[0] * s[1])
    return torch.cat([t if tuple(t.shape[-2:]) == (h, w) else
                      F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False) for t in features], 1)


def project(x: torch.Tensor, seed: int, dim: int = PROJECTION_DIM) -> tuple[torch.Tensor, int]:
    """The seeded start and projection of ``greedy_coreset``.

    Args:
        x: (N, D) rows.

    Returns:
        ((N, min(D, dim)) projected rows, the first centre's index): the generator seeded with ``seed``
        draws the first centre (``torch.randint(N)``) and then, when ``D > dim``, a (D, dim) Gaussian
        matrix scaled by ``1 / sqrt(dim)``.
    """
    g = torch.Generator().manual_seed(int(seed))
    start = int(torch.randint(x.shape[0], (1,), generator=g))
    if x.shape[1] <= dim:
        return x.float(), start
    p = torch.randn(x.shape[1], dim, generator=g) / math.sqrt(dim)
    return x.float() @ p.to(x.device), start


def greedy_coreset(x: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """PatchCore's approximate greedy k-center: ``m`` row indices of ``x`` covering it.

    Args:
        x: (N, D) bank rows (any device).
        m: centres kept, 1 <= m <= N.
        seed: the start and the projection (``project``).

    Returns:
        (m,) int64 indices on the CPU, in the order chosen.
    """
    z, start = project(x, seed)
    z = z.double()  # exact enough that the greedy choice is the definition's (float64 expansion)
    sq = z.pow(2).sum(1)
    selected = [start]
    nearest = torch.full((z.shape[0],), float("inf"), dtype=torch.float64, device=z.device)
    last = start
    # each step is one (N, d) mat-vec: on a CPU, more threads only add their start-up to every step
    with one_thread() if z.device.type == "cpu" else nullcontext():
        for _ in range(m - 1):
            d = torch.mv(z, z[last]).mul_(-2.0).add_(sq).add_(sq[last])  # squared distances to the last centre
            torch.minimum(nearest, d, out=nearest)
            last = int(nearest.argmax())  # the first of equal maxima
            selected.append(last)
    return torch.tensor(selected, dtype=torch.long)


def background_mask(t: torch.Tensor, threshold: float = 10.0, border: float = 0.2) -> torch.Tensor:
    """AnomalyDINO's foreground mask of each image from its own patch features.

    Args:
        t: (B, C, h, w) features.
        threshold: on the first principal component's score (10 in AnomalyDINO, for DINOv2's last layer).
        border: the central crop checked for the sign is ``[border, 1 - border]`` of each side.

    Returns:
        (B, h, w) bool, True = foreground (scored). The component's sign is sklearn's (its largest
        entry positive); when at most 35% of the central crop is foreground the opposite side is taken;
        then a 3 x 3 dilation and a 3 x 3 closing, cells outside the map counting as neither.
    """
    b, c, h, w = t.shape
    x = t.flatten(2).transpose(1, 2).double()  # (B, N, C)
    x = x - x.mean(1, keepdim=True)
    # the first principal axis: the top eigenvector of the (C, C) scatter matrix (an SVD of the (N, C) patches
    # computes every axis)
    scatter = x.transpose(1, 2) @ x
    with one_thread() if scatter.device.type == "cpu" else nullcontext():  # a threaded small eigh stalls on busy
        v = torch.linalg.eigh(scatter)[1][..., -1]  # cores (34 s against 0.2 s); (B, C), eigenvalues ascending
    v = v * torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    pc = torch.einsum("bnc,bc->bn", x, v).view(b, h, w)
    mask = pc > threshold
    y0, y1, x0, x1 = int(h * border), int(h * (1 - border)), int(w * border), int(w * (1 - border))
    crop = mask[:, y0:y1, x0:x1]
    flip = crop.flatten(1).sum(1) <= crop[0].numel() * 0.35
    mask = torch.where(flip.view(b, 1, 1), -pc > threshold, mask)

    def dilate(m: torch.Tensor) -> torch.Tensor:  # max_pool2d pads with -inf: outside never dilates
        return F.max_pool2d(m.float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0

    def erode(m: torch.Tensor) -> torch.Tensor:  # the dual: outside never erodes
        return ~dilate(~m)

    return erode(dilate(dilate(mask)))


def rotations(x: torch.Tensor, angles: Sequence[int] = ROTATION_ANGLES) -> torch.Tensor:
    """Each image rotated about its centre by every angle (AnomalyDINO's reference augmentation).

    Args:
        x: (B, 3, S, S) RGB in [0, 1].

    Returns:
        (B * len(angles), 3, S, S), image-major: multiples of 90 degrees exactly (``rot90``), the others
        bilinear with reflection at the border (AnomalyDINO: OpenCV's ``warpAffine`` with its default
        reflecting border).
    """
    out = []
    for img in x:
        for a in angles:
            if a % 90 == 0:
                out.append(torch.rot90(img, a // 90, dims=(-2, -1)))
                continue
            r = math.radians(a)
            theta = torch.tensor([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0]],
                                 dtype=x.dtype, device=x.device)
            grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
            out.append(F.grid_sample(img[None], grid, mode="bilinear", padding_mode="reflection",
                                     align_corners=False)[0])
    return torch.stack(out)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``smooth``: (2 int(4 sigma + 0.5) + 1,) float64."""
    half = int(4.0 * sigma + 0.5)
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def smooth(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """The map at image size, Gaussian-smoothed (anomalib's PatchCore and AnomalyDINO map generator).

    Args:
        maps: (B, K, h, w) on the patch grid.
        size: the image side S.
        sigma: in image pixels, > 0.

    Returns:
        (B, K, S, S) float32: nearest upsampling, then the separable Gaussian with reflect padding.

    Raises:
        ValueError: the kernel's half-width reaches the image side (reflect padding is then undefined).
    """
    b, k = maps.shape[:2]
    kernel = gaussian_kernel(sigma).to(maps.device, torch.float32)
    half = kernel.numel() // 2
    if half >= size:
        raise ValueError(f"method.smooth_sigma={sigma:g}: the Gaussian's half-width {half} px reaches the image side "
                         f"{size} px; expected a smaller sigma (or 0 = off)")
    x = F.interpolate(maps.float().reshape(b * k, 1, *maps.shape[-2:]), size=(size, size), mode="nearest")
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(b, k, size, size)


class Bank:
    """A memory bank of patch features, ready to search: rows on one device, their squared norms computed once.

    Args:
        rows: (M, D) features (cosine: L2-normalised here).
        metric: ``euclidean`` or ``cosine`` (1 - cosine similarity, in [0, 2], as AnomalyDINO).
    """

    def __init__(self, rows: torch.Tensor, metric: str):
        self.metric = metric
        rows = rows.float()
        self.rows = F.normalize(rows, dim=1) if metric == "cosine" else rows
        self.sq = self.rows.pow(2).sum(1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.rows.shape[0]

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, squared norms) on ``device``, copied there once."""
        if device not in self._on:
            self._on[device] = (self.rows.to(device), self.sq.to(device))
        return self._on[device]


def knn_search(queries: torch.Tensor, bank: Bank, k: int, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest bank rows of each query.

    Args:
        queries: (Q, D) on any device; the search runs there.
        bank: the memory bank.
        k: neighbours (at most ``len(bank)``).
        chunk: queries per distance block (memory: chunk x M floats).

    Returns:
        ((Q, k) float64 distances, (Q, k) int64 bank indices), nearest first: fp32 matmul distances select
        ``k + RECHECK`` candidates, whose distances are then computed exactly in float64 (``||q - b||``, or
        ``1 - cos``) and sorted.
    """
    rows, sq = bank.on(queries.device)
    k = min(k, len(bank))
    cand_k = min(k + RECHECK, len(bank))
    q_all = F.normalize(queries.float(), dim=1) if bank.metric == "cosine" else queries.float()
    # the matmul uses every thread; the selection and the re-check are small per row: on a CPU, one thread
    # (more only add their start-up to each call, and stall on cores busy with other work)
    few = one_thread if q_all.device.type == "cpu" else nullcontext
    dists, index = [], []
    for q in q_all.split(chunk):
        if bank.metric == "cosine":  # the nearest: the largest cosine similarity
            order = q @ rows.T  # (c, M)
        else:  # ||q - b||^2 = ||q||^2 + ||b||^2 - 2 q.b: ||q||^2 is the same along a row, so ranks need only the rest
            order = torch.addmm(sq.unsqueeze(0), q, rows.T, beta=1.0, alpha=-2.0)
        with few():
            idx = order.topk(cand_k, dim=1, largest=bank.metric == "cosine").indices  # (c, cand_k)
            del order
            for qs, ids in zip(q.split(256), idx.split(256)):  # float64 (256, cand_k, D) blocks bound memory
                b = rows[ids].double()
                qd = qs.double().unsqueeze(1)
                if bank.metric == "cosine":
                    exact = (1.0 - (F.normalize(qd, dim=-1) * F.normalize(b, dim=-1)).sum(-1)).clamp(0.0, 2.0)
                else:
                    exact = (qd - b).pow(2).sum(-1).sqrt()
                d, j = exact.topk(k, dim=1, largest=False)
                dists.append(d)
                index.append(ids.gather(1, j))
    if not dists:
        return q_all.new_zeros(0, k, dtype=torch.float64), torch.zeros(0, k, dtype=torch.long, device=q_all.device)
    return torch.cat(dists), torch.cat(index)


def knn_distance(queries: torch.Tensor, bank: Bank, k: int, chunk: int = 2048) -> torch.Tensor:
    """Mean distance of each query to its ``k`` nearest bank rows (``knn_search``): (Q,) float32."""
    return knn_search(queries, bank, k, chunk)[0].mean(1).float()
