"""A disk cache of extracted maps, so repeated runs and threshold or metric sweeps run no backbone.

Entries are keyed by everything the maps depend on: the model config (architecture, input
size, normalisation), the identity of its weights (hub tag, file path + size + mtime, or the
bundling package's version), the map method and its options, the exact preprocessed input
(a hash of the resized uint8 image), and hold one array per layer (plus the logits). Methods
that learn from other images (``patch_knn``) are not cached.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)
VERSION = 1  # bump when the meaning of cached maps changes


def weights_identity(weights: Mapping[str, Any], pretrained: bool) -> dict:
    """What identifies a model's weights without reading them."""
    if not pretrained:
        return {"pretrained": False}  # random init is seeded by ``seed``, part of the key too
    source = weights.get("source", "hub")
    ident: dict[str, Any] = {"source": source}
    if source == "file" and weights.get("path"):
        path = Path(weights["path"]).expanduser()
        stat = path.stat() if path.exists() else None
        ident.update(path=str(path.resolve()), size=stat.st_size if stat else None, mtime=stat.st_mtime if stat else None)
    elif source == "bundled":
        from ..backbones.bundled import BUNDLES

        distribution = BUNDLES.get(weights.get("bundle"), (None,))[0]
        try:
            version = importlib.metadata.version(distribution) if distribution else None
        except importlib.metadata.PackageNotFoundError:
            version = None
        ident.update(bundle=weights.get("bundle"), version=version)
    else:
        ident.update(hub_id=weights.get("hub_id"))
    return ident


def config_key(model_cfg: Mapping[str, Any], method_cfg: Mapping[str, Any], seed: int) -> str:
    """Hash of the model and method configs (weights identity included)."""
    model = dict(model_cfg)
    ident = weights_identity(model.get("weights") or {}, bool(model.get("pretrained", True)))
    blob = json.dumps({"v": VERSION, "model": model, "weights": ident, "method": dict(method_cfg),
                       "seed": seed if not ident.get("pretrained", True) else None}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def image_key(image_u8: np.ndarray) -> str:
    """Hash of the exact preprocessed input (resized uint8 RGB)."""
    h = hashlib.sha256(np.ascontiguousarray(image_u8).tobytes())
    h.update(str(image_u8.shape).encode())
    return h.hexdigest()[:32]


class MapCache:
    """Maps per (config, image) on disk, with hit/miss counts and a size limit.

    Args:
        root: cache folder; entries live in ``root/<config key>/<image key>.npz``.
        key: the config key (``config_key``).
        max_gb: size limit; the least recently used entries go first when it is exceeded.
    """

    def __init__(self, root: Path, key: str, max_gb: float = 2.0):
        self.dir = Path(root).expanduser() / key
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_gb * 2**30)
        self.hits = self.misses = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cache.dir={self.root}: cannot create the cache folder ({e.strerror}); "
                             "set cache.dir to a writable folder or cache.enabled=false") from None

    def get(self, image: str, layers: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor | None] | None:
        """The cached maps of every requested layer and the logits, or None (a miss)."""
        path = self.dir / f"{image}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if all(f"layer_{layer}" in z.files for layer in layers):
                        maps = {layer: torch.from_numpy(z[f"layer_{layer}"]) for layer in layers}
                        logits = torch.from_numpy(z["logits"]) if "logits" in z.files else None
                        os.utime(path)  # recently used
                        self.hits += 1
                        return maps, logits
            except (OSError, ValueError, KeyError):
                log.warning("cache entry %s unreadable; recomputing", path)
        self.misses += 1
        return None

    def put(self, image: str, maps: Mapping[int, torch.Tensor], logits: torch.Tensor | None) -> None:
        """Store (merging with layers already cached for this image); atomic."""
        path = self.dir / f"{image}.npz"
        arrays: dict[str, np.ndarray] = {}
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError):
                arrays = {}
        arrays.update({f"layer_{layer}": m.detach().cpu().float().numpy() for layer, m in maps.items()})
        if logits is not None:
            arrays["logits"] = logits.detach().cpu().float().numpy()
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        try:
            np.savez(tmp, **arrays)
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("map cache not written (%s); the run goes on without it", e.strerror)

    def evict(self) -> int:
        """Delete least recently used entries (all configs) until under the size limit; returns how many."""
        files = sorted(self.root.glob("*/*.npz"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        removed = 0
        for p in files:
            if total <= self.max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            removed += 1
        return removed
