"""A k-NN probe of an image label on pooled representations: DINO's k-NN evaluation, leave-one-out.

As DINO's ``eval_knn`` (Caron et al. 2021): features L2-normalised, cosine similarity, the k most
similar images vote for their label with weight ``exp(sim / T)`` (T = 0.07), the label with the largest
summed weight wins. DINO votes from a training set for a test set; here every image is predicted from
all the *other* images (leave-one-out): an image is never its own neighbour, so a probe of a label
that only the image itself carries scores nothing. numpy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

TEMPERATURE = 0.07
MAX_K = 20
CHUNK = 1024  # query rows per similarity block


def default_k(labels: Sequence[object], max_k: int = MAX_K) -> int:
    """k = 20, or fewer when classes are small: at most (smallest class of >= 2 images) - 1, at least 1.

    A larger k than an image's own class can supply only adds votes from other classes.
    """
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    sizes = counts[counts >= 2]
    smallest = int(sizes.min()) if sizes.size else 2
    return int(max(1, min(max_k, smallest - 1, len(labels) - 1)))


def knn_predict(x: np.ndarray, labels: Sequence[object], k: int, temperature: float = TEMPERATURE) -> np.ndarray:
    """Leave-one-out weighted k-NN: each image's label predicted from the other images.

    Args:
        x: (n, D) representations.
        labels: n labels (any hashable values).
        k: neighbours voting, 1 <= k <= n - 1.
        temperature: T of the vote weights exp(sim / T).

    Returns:
        (n,) predicted labels (ties: the label that sorts first).
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    n = x.shape[0]
    if x.ndim != 2 or labels.shape != (n,):
        raise ValueError(f"expected x (n, D) and n labels, got {x.shape} and {labels.shape}")
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k}: expected 1..{n - 1} (the other images)")
    classes, y = np.unique(labels, return_inverse=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1.0)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        sim = xn[start:start + CHUNK] @ xn.T  # (c, n) cosine similarities
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf  # leave one out: never its own neighbour
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        weights = np.exp((np.take_along_axis(sim, top, 1) - 1.0) / temperature)  # exp(sim / T), scaled by exp(-1/T)
        votes = np.zeros((sim.shape[0], len(classes)))
        np.add.at(votes, (rows[:, None].repeat(k, 1), y[top]), weights)
        out[start:start + CHUNK] = votes.argmax(1)
    return classes[out]


def probe(x: np.ndarray, labels: Sequence[object], k: int | None = None, temperature: float = TEMPERATURE,
          n_boot: int = 1000, seed: int = 0) -> dict:
    """Leave-one-out k-NN accuracy of ``labels`` from ``x``, with chance level and a 95% bootstrap CI.

    Args:
        x: (n, D) representations; labels: n labels.
        k: neighbours (default ``default_k``).
        n_boot: bootstrap resamples of the images (the per-image hits resampled; 0: no CI).

    Returns:
        ``k, accuracy, ci_low, ci_high, chance`` (the largest class's share: always guessing it),
        ``n_images, n_classes``.
    """
    labels = np.asarray(labels)
    k = default_k(labels) if k is None else int(k)
    hits = (knn_predict(x, labels, k, temperature) == labels).astype(np.float64)
    _, counts = np.unique(labels, return_counts=True)
    low = high = float("nan")
    if n_boot:
        means = hits[np.random.default_rng(seed).integers(0, len(hits), size=(n_boot, len(hits)))].mean(1)
        low, high = float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
    return {"k": k, "accuracy": float(hits.mean()), "ci_low": low, "ci_high": high,
            "chance": float(counts.max() / counts.sum()), "n_images": int(len(labels)), "n_classes": int(len(counts))}
