"""A k-NN probe of an image label on representations: DINO's k-NN evaluation, leave-one-out, with its null.

As DINO's ``eval_knn`` (Caron et al. 2021): features L2-normalised, cosine similarity, the k most
similar images vote for their label with weight ``exp(sim / T)`` (T = 0.07), the label with the largest
summed weight wins. DINO votes from a training set for a test set; here every image is predicted from
all the *other* images (leave-one-out): an image is never its own neighbour, so a probe of a label
that only the image itself carries scores nothing. With ``groups`` (leave-one-group-out) an image is
predicted from the images of the *other* groups only: a nuisance factor (the texture an image was cut
from) cannot outvote the label when the groups are that factor.

Chance is not "the largest class's share": where the representation clusters by another factor balanced
against the label, leave-one-out can score far below it (the image's own class is always outvoted by
its cluster). The chance level is therefore a label-permutation null under the same scheme: the
neighbours and their weights do not depend on the labels, so every permutation re-reads the same votes
(vectorised, no recomputation). Accuracy intervals are binomial (Wilson 1927 or Clopper-Pearson 1934),
which never collapse to zero width at 0 or n hits, unlike a percentile bootstrap. numpy (+ scipy for
Clopper-Pearson).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

TEMPERATURE = 0.07
MAX_K = 20
CHUNK = 1024  # query rows per similarity block
PERMUTATIONS = 200  # label permutations of the null (p-values resolve to 1 / 201)
PERM_FLOATS = 1 << 22  # floats of one (permutations, n, k) vote block: 32 MB
INTERVALS = ("wilson", "clopper-pearson")
ALPHA = 0.05  # two-sided 95% intervals; one-sided 5% tests against the null
Z95 = 1.959963984540054  # the normal 97.5% quantile


def default_k(labels: Sequence[object], max_k: int = MAX_K, groups: Sequence[object] | None = None) -> int:
    """k = 20, or fewer when classes are small: at most (smallest class of >= 2 images) - 1, at least 1.

    A larger k than an image's own class can supply only adds votes from other classes. With ``groups``,
    also at most the fewest images outside any one group (the candidates of leave-one-group-out).
    """
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    sizes = counts[counts >= 2]
    smallest = int(sizes.min()) if sizes.size else 2
    k = max(1, min(max_k, smallest - 1, len(labels) - 1))
    if groups is not None:
        k = min(k, max(1, _fewest_others(np.asarray(groups))))
    return int(k)


def _fewest_others(groups: np.ndarray) -> int:
    _, counts = np.unique(groups, return_counts=True)
    return int(len(groups) - counts.max())


def neighbours(x: np.ndarray, k: int, groups: Sequence[object] | None = None, temperature: float = TEMPERATURE
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most similar other rows (cosine) and their vote weights.

    Args:
        x: (n, D) representations.
        k: neighbours, 1 <= k <= n - 1 (with groups: <= the fewest rows outside any one group).
        groups: n group values; rows of a row's own group are never its neighbours (leave-one-group-out).
        temperature: T of the vote weights exp(sim / T).

    Returns:
        (n, k) neighbour indices and (n, k) weights exp((sim - 1) / T) (exp(sim / T) scaled by exp(-1/T):
        the same vote, no overflow).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if x.ndim != 2:
        raise ValueError(f"expected x (n, D), got {x.shape}")
    g = None
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"expected {n} groups, got {groups.shape}")
        _, g = np.unique(groups, return_inverse=True)
        if not 1 <= k <= _fewest_others(groups):
            raise ValueError(f"k={k}: expected 1..{_fewest_others(groups)} (the rows outside the largest group)")
    elif not 1 <= k <= n - 1:
        raise ValueError(f"k={k}: expected 1..{n - 1} (the other images)")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1.0)
    top = np.empty((n, k), dtype=np.int64)
    weights = np.empty((n, k))
    for start in range(0, n, CHUNK):
        sim = xn[start:start + CHUNK] @ xn.T  # (c, n) cosine similarities
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # leave one out: never its own neighbour
        if g is not None:
            sim[g[start:start + CHUNK, None] == g[None, :]] = -np.inf  # nor any row of its own group
        best = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top[start:start + CHUNK] = best
        weights[start:start + CHUNK] = np.exp((np.take_along_axis(sim, best, 1) - 1.0) / temperature)
    return top, weights


def _vote(top: np.ndarray, weights: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Winning class index per row for label indices ``y`` ((n,) or (P, n)): (n,) or (P, n); ties: the
    class that sorts first."""
    got = y[..., top]  # (..., n, k) the neighbours' labels
    votes = np.stack([(weights * (got == c)).sum(-1) for c in range(n_classes)], -1)
    return votes.argmax(-1)


def knn_predict(x: np.ndarray, labels: Sequence[object], k: int, temperature: float = TEMPERATURE,
                groups: Sequence[object] | None = None) -> np.ndarray:
    """Leave-one-out (or leave-one-group-out) weighted k-NN: each image's label predicted from the others.

    Args:
        x: (n, D) representations.
        labels: n labels (any hashable values).
        k: neighbours voting, 1 <= k <= n - 1.
        temperature: T of the vote weights exp(sim / T).
        groups: n group values: an image is predicted from the other groups' images only.

    Returns:
        (n,) predicted labels (ties: the label that sorts first).
    """
    labels = np.asarray(labels)
    n = np.asarray(x).shape[0]
    if labels.shape != (n,):
        raise ValueError(f"expected x (n, D) and n labels, got {np.asarray(x).shape} and {labels.shape}")
    classes, y = np.unique(labels, return_inverse=True)
    top, weights = neighbours(x, k, groups, temperature)
    return classes[_vote(top, weights, y, len(classes))]


def binomial_interval(hits: int, n: int, method: str = "wilson", alpha: float = ALPHA) -> tuple[float, float]:
    """Two-sided 1 - alpha interval of a proportion ``hits / n``; never of zero width for n >= 1.

    ``wilson``: Wilson's score interval (1927); ``clopper-pearson``: the exact interval from beta quantiles
    (Clopper & Pearson 1934), wider.
    """
    if method not in INTERVALS:
        raise ValueError(f"interval={method!r}: expected one of {', '.join(INTERVALS)}")
    if n < 1:
        return float("nan"), float("nan")
    if method == "clopper-pearson":
        from scipy.stats import beta

        low = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, n - hits + 1))
        high = 1.0 if hits == n else float(beta.ppf(1 - alpha / 2, hits + 1, n - hits))
        return low, high
    if alpha == ALPHA:
        z = Z95
    else:
        from scipy.stats import norm

        z = float(norm.ppf(1 - alpha / 2))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at 0 or n hits one end is exactly 0 or 1 (the formula's rounding leaves ~1e-17)
    return (0.0 if hits == 0 else float(centre - half)), (1.0 if hits == n else float(centre + half))


def _permuted(y: np.ndarray, groups: np.ndarray | None, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` label permutations (count, n). Where each of ``groups`` holds one label (an image's cells),
    whole groups' labels are permuted (the exchangeable units); otherwise rows are."""
    if groups is not None:
        _, first, g = np.unique(groups, return_index=True, return_inverse=True)
        order = np.argsort(first)  # groups in the order they first appear (one row per group: the same draws)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        g, per_group = rank[g], y[first[order]]
        if (per_group[g] == y).all():
            return np.stack([rng.permutation(per_group)[g] for _ in range(count)])
    return np.stack([rng.permutation(y) for _ in range(count)])


def probe(x: np.ndarray, labels: Sequence[object], k: int | None = None, temperature: float = TEMPERATURE,
          groups: Sequence[object] | None = None, permutations: int = PERMUTATIONS, interval: str = "wilson",
          seed: int = 0, units: Sequence[object] | None = None) -> dict:
    """Leave-one-out (or leave-one-group-out) k-NN accuracy of ``labels`` from ``x``, with its interval and
    its label-permutation null.

    Args:
        x: (n, D) representations; labels: n labels.
        k: neighbours (default ``default_k``).
        groups: n group values for leave-one-group-out (None: leave-one-out).
        permutations: label permutations of the null (0: no null, NaN columns).
        interval: ``wilson`` or ``clopper-pearson`` (95%).
        seed: the permutations' seed.
        units: n values naming the rows' exchangeable units (the image of each cell): where each unit holds
            one label, the null permutes the units' labels, not the rows'. Default: ``groups``.

    Returns:
        ``k, accuracy, ci_low, ci_high, interval``; the null: ``chance`` (its mean), ``null_q05``,
        ``null_q95``, ``p_value`` (one-sided, accuracy above the null: (1 + #null >= accuracy) /
        (permutations + 1)), ``p_below`` (the same, below), ``permutations``; ``majority`` (the largest
        class's share), ``n_images`` (rows), ``n_classes``, ``n_groups`` (None without groups).
    """
    labels = np.asarray(labels)
    if groups is not None:
        groups = np.asarray(groups)
    if interval not in INTERVALS:
        raise ValueError(f"interval={interval!r}: expected one of {', '.join(INTERVALS)}")
    k = default_k(labels, groups=groups) if k is None else int(k)
    classes, y = np.unique(labels, return_inverse=True)
    top, weights = neighbours(x, k, groups, temperature)
    hits = _vote(top, weights, y, len(classes)) == y
    n, correct = len(y), int(hits.sum())
    accuracy = correct / n
    low, high = binomial_interval(correct, n, interval)
    null = np.empty(0)
    if permutations:
        rng = np.random.default_rng(seed)
        parts = []
        step = max(1, PERM_FLOATS // (n * k))
        for start in range(0, permutations, step):
            ys = _permuted(y, np.asarray(units) if units is not None else groups, min(step, permutations - start),
                           rng)
            parts.append((_vote(top, weights, ys, len(classes)) == ys).mean(1))
        null = np.concatenate(parts)
    nan = float("nan")
    return {"k": k, "accuracy": float(accuracy), "ci_low": low, "ci_high": high, "interval": interval,
            "chance": float(null.mean()) if null.size else nan,
            "null_q05": float(np.quantile(null, 0.05)) if null.size else nan,
            "null_q95": float(np.quantile(null, 0.95)) if null.size else nan,
            # a tolerance so that an accuracy equal to a null draw counts as reached (floating means)
            "p_value": float((1 + (null >= accuracy - 1e-12).sum()) / (null.size + 1)) if null.size else nan,
            "p_below": float((1 + (null <= accuracy + 1e-12).sum()) / (null.size + 1)) if null.size else nan,
            "permutations": int(null.size),
            "majority": float(np.bincount(y).max() / n), "n_images": int(n), "n_classes": int(len(classes)),
            "n_groups": int(len(np.unique(groups))) if groups is not None else None}


def below_null(result: dict, alpha: float = ALPHA) -> bool:
    """Whether a probe's accuracy is significantly below its permutation null (one-sided, ``alpha``)."""
    p = result.get("p_below", float("nan"))
    return bool(np.isfinite(p) and p < alpha)
