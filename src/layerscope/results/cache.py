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
from typing import Any, Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)
VERSION = 1  # bump when the meaning of cached maps changes


def _extra_key(name: str, layer: int) -> str:
    """The entry's array of one extra (``Backbone.extra_hooks``) of one layer."""
    return f"extra_{name}_layer_{layer}"


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
        if not max_gb > 0:
            raise ValueError(f"cache.max_gb={max_gb}: expected a size in GB > 0 (or cache.enabled=false)")
        self.dir = Path(root).expanduser() / key
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_gb * 2**30)
        self.hits = self.misses = 0
        self.writable = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cache.dir={self.root}: cannot create the cache folder ({e.strerror}); "
                             "set cache.dir to a writable folder or cache.enabled=false") from None

    def _read(self, path: Path) -> dict[str, np.ndarray] | None:
        """Every array of an entry, or None when it is missing or unreadable (then it is dropped, once warned)."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - truncated, empty, bad CRC, not a zip: all mean "recompute"
            log.warning("map cache entry %s is unreadable (%s: %s); dropped and recomputed", path,
                        type(e).__name__, e)
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def get(self, image: str, layers: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor | None] | None:
        """The cached maps of every requested layer and the logits, or None (a miss)."""
        found = self.get_all(image, layers)
        return found[:2] if found is not None else None

    def get_all(self, image: str, layers: list[int], extras: Sequence[str] = ()
                ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None, dict[str, dict[int, torch.Tensor]]] | None:
        """The cached maps, logits and ``extras`` (name -> layer -> tensor) of every requested layer, or None
        (a miss, also when an entry lacks one of the extras: it is then recomputed and completed)."""
        path = self.dir / f"{image}.npz"
        arrays = self._read(path)
        keys = [f"layer_{layer}" for layer in layers] + [_extra_key(e, layer) for e in extras for layer in layers]
        if arrays is not None and all(key in arrays for key in keys):
            try:
                os.utime(path)  # recently used
            except OSError:
                pass  # a read-only cache still serves its entries
            self.hits += 1
            return ({layer: torch.from_numpy(arrays[f"layer_{layer}"]) for layer in layers},
                    torch.from_numpy(arrays["logits"]) if "logits" in arrays else None,
                    {e: {layer: torch.from_numpy(arrays[_extra_key(e, layer)]) for layer in layers} for e in extras})
        self.misses += 1
        return None

    def put(self, image: str, maps: Mapping[int, torch.Tensor], logits: torch.Tensor | None,
            extras: Mapping[str, Mapping[int, torch.Tensor]] | None = None) -> None:
        """Store (merging with layers already cached for this image); atomic. A cache that cannot be
        written (read-only, full) is warned about once and then left alone.

        Args:
            extras: name -> layer -> tensor captured beside the maps (``Backbone.extra_hooks``).
        """
        if not self.writable:
            return
        path = self.dir / f"{image}.npz"
        arrays = self._read(path) or {}
        arrays.update({f"layer_{layer}": m.detach().cpu().float().numpy() for layer, m in maps.items()})
        if logits is not None:
            arrays["logits"] = logits.detach().cpu().float().numpy()
        for name, per_layer in (extras or {}).items():
            arrays.update({_extra_key(name, layer): t.detach().cpu().float().numpy() for layer, t in per_layer.items()})
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        try:
            np.savez(tmp, **arrays)
            tmp.replace(path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            self.writable = False
            log.warning("map cache %s not writable (%s); the run goes on without storing maps", self.dir,
                        e.strerror or e)

    def evict(self) -> int:
        """Delete least recently used entries (all configs) until under the size limit; returns how many."""
        entries = []
        for p in self.root.glob("*/*.npz"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, p in entries:
            if total <= self.max_bytes:
                break
            try:
                p.unlink()
            except OSError:
                break  # a read-only cache: nothing to free
            total -= size
            removed += 1
        return removed
