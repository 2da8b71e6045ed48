"""``patch_knn``: the distance of each patch feature to its nearest normal patch features (PatchCore,
AnomalyDINO; no training). The presets ``patchcore`` and ``anomalydino`` are YAMLs over its options."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..config.method_options import PatchKNNOptions
from . import knn_conventions as knn
from .base import MapMethod

log = logging.getLogger(__name__)


def _number(key: str, value, expected: str) -> float | None:
    """``method.<key>`` as a float (None stays None), or ValueError naming the option."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"method.{key}={value}: expected {expected}")
    return float(value)


class PatchKNN(MapMethod):
    """Distance of each patch feature to its nearest normal patch features (PatchCore, AnomalyDINO; no training).

    Per layer, a memory bank holds the patch features of normal images (``train/good``, ``data.normal_dir``
    or defect-free synthetic images); a patch's map value is the mean distance to its ``k`` nearest bank
    entries. Each option is one published convention (``methods/knn_conventions.py`` holds them, with their sources):

    Options (``PatchKNNOptions``):
        k: neighbours averaged, >= 1.
        metric: ``euclidean`` (PatchCore) or ``cosine`` (AnomalyDINO: 1 - cosine similarity).
        aggregate: 1 (off), 3 or 5: PatchCore's local p x p average of the features before the search
            (zero padding, divisor p*p).
        coreset: ``random`` or ``greedy`` (PatchCore's approximate greedy k-center, seeded projection).
        coreset_ratio: fraction of the bank kept by the coreset (PatchCore: 0.1), or None (all).
        bank_size: most entries kept per layer after ``coreset_ratio``, or None (no cap).
        smooth_sigma: Gaussian smoothing of the map at image size, sigma in pixels (PatchCore/anomalib: 4);
            0 = off (the map stays on the patch grid). With smoothing the maps are image-sized.
        mask_background: AnomalyDINO's PCA masking (object categories): references keep only foreground
            patches, and background patches of a scored image get 0.
        mask_threshold: the first principal component's threshold of the mask (AnomalyDINO: 10).
        augment_references: ``none`` or ``rotations`` (AnomalyDINO: each reference at 0, 45, ..., 315 degrees).
        fuse: lists of layers whose features are concatenated after resizing to the finest grid among them
            (PatchCore's ``layer2 + layer3``); each is a candidate of its own, a map named like ``2+3`` (members
            ascending) reported at its lowest member's layer, beside that layer's own ``knn`` map.
        n_references: normal images used, or None for all the dataset offers.
        chunk: query rows per distance block (bounds memory).
        seed: coreset seed (random subset or the greedy start and projection).
    """

    name = "patch_knn"
    capture = "features"
    needs_references = True
    Options = PatchKNNOptions

    def __init__(self, backbone: Any, **options: Any) -> None:
        super().__init__(backbone, **options)
        o = self.options
        k, metric, aggregate, coreset, chunk = o.k, o.metric, o.aggregate, o.coreset, o.chunk
        bank_size, n_references, augment_references = o.bank_size, o.n_references, o.augment_references
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"method.k={k}: expected an int >= 1")
        if metric not in knn.METRICS:
            raise ValueError(f"method.metric={metric}: expected {' or '.join(knn.METRICS)}")
        if aggregate not in knn.AGGREGATES or isinstance(aggregate, bool):
            raise ValueError(f"method.aggregate={aggregate}: expected 1 (off), 3 or 5")
        if coreset not in knn.CORESETS:
            raise ValueError(f"method.coreset={coreset}: expected random or greedy")
        coreset_ratio = _number("coreset_ratio", o.coreset_ratio, "a fraction in (0, 1] or null (all)")
        smooth_sigma = _number("smooth_sigma", o.smooth_sigma, "sigma in pixels >= 0 (0 = off)")
        mask_threshold = _number("mask_threshold", o.mask_threshold, "a number")
        if coreset_ratio is not None and not 0 < coreset_ratio <= 1:
            raise ValueError(f"method.coreset_ratio={coreset_ratio:g}: expected a fraction in (0, 1] or null (all)")
        if bank_size is not None and int(bank_size) < int(k):
            raise ValueError(f"method.bank_size={bank_size}: expected at least method.k={k} entries")
        if not smooth_sigma >= 0:
            raise ValueError(f"method.smooth_sigma={smooth_sigma:g}: expected sigma in pixels >= 0 (0 = off)")
        if augment_references not in knn.AUGMENTS:
            raise ValueError(f"method.augment_references={augment_references}: expected none or rotations")
        if n_references is not None and int(n_references) < 1:
            raise ValueError(f"method.n_references={n_references}: expected an int >= 1 or null (all)")
        if int(chunk) < 1:
            raise ValueError(f"method.chunk={chunk}: expected an int >= 1")
        self.k, self.metric, self.aggregate, self.coreset = int(k), metric, int(aggregate), coreset
        self.coreset_ratio = None if coreset_ratio is None else float(coreset_ratio)
        self.bank_size, self.n_references = bank_size, n_references
        self.smooth_sigma, self.mask_background = float(smooth_sigma), bool(o.mask_background)
        self.mask_threshold, self.augment_references = float(mask_threshold), augment_references
        self.chunk, self.seed = int(chunk), int(o.seed)
        self.fused = self._fused(o.fuse, getattr(backbone, "num_layers", None))
        self.banks: dict[int | tuple[int, ...], knn.Bank] = {}

    @staticmethod
    def _fused(fuse, num_layers: int | None) -> list[tuple[int, ...]]:
        """``method.fuse`` checked: each a list of at least two distinct layers (negative from the end), ascending."""
        out = []
        for group in fuse or []:
            members = list(group) if isinstance(group, (list, tuple)) else None
            ok = members is not None and len(members) >= 2 and all(
                isinstance(m, int) and not isinstance(m, bool) and (num_layers is None or -num_layers <= m < num_layers)
                for m in members)
            if ok:
                members = sorted({m % num_layers if num_layers else m for m in members})
                ok = len(members) == len(group) and all(m >= 0 for m in members)
            if not ok:
                raise ValueError(f"method.fuse={list(fuse)}: expected lists of at least two distinct layers"
                                 + (f" in [-{num_layers}, {num_layers})" if num_layers else "") + ", e.g. [[2,3]]")
            out.append(tuple(members))
        return list(dict.fromkeys(out))

    @staticmethod
    def fused_name(members: Sequence[int]) -> str:
        """A fused candidate's map name: ``2+3``."""
        return "+".join(str(m) for m in members)

    def capture_layers(self, layers: Sequence[int]) -> list[int]:
        """``layers`` and every member of a fused candidate; each fused candidate's lowest layer must be in ``layers``
        (its map is reported there)."""
        for members in self.fused:
            if members[0] not in layers:
                raise ValueError(f"method.fuse: {self.fused_name(members)} is reported at layer {members[0]}, which is "
                                 f"not among layer={list(layers)}; add it")
        return sorted(set(layers).union(*self.fused))

    def extra_map_names(self, layer: int) -> list[str]:
        return [self.fused_name(m) for m in self.fused if m[0] == layer]

    def num_maps(self) -> int:
        return 1

    def map_names(self) -> list[str]:
        return ["knn"]

    def _rows(self, ts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """One candidate's features (one layer, or the members of a fused one: each (B, C_i, h_i, w_i)) -> its
        (B*h*w, C) search rows, each layer averaged locally before the fusion (as anomalib's PatchCore), the
        (B, h, w) foreground (from the fused raw features) or None, and the grid (h, w)."""
        raw = ts[0] if len(ts) == 1 else knn.fuse([t.float() for t in ts])
        mask = knn.background_mask(raw, self.mask_threshold) if self.mask_background else None
        t = knn.fuse([knn.local_average(t.float(), self.aggregate) for t in ts])
        return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1]), mask, tuple(t.shape[-2:])

    def _candidates(self, layers) -> list[int | tuple[int, ...]]:
        """The banks' keys: each layer, then each fused candidate (a tuple of its members)."""
        return [*layers, *self.fused]

    def _kept(self, n: int) -> int:
        """Bank entries kept out of ``n``: ``coreset_ratio`` (floored, as PatchCore), then ``bank_size``."""
        m = n if self.coreset_ratio is None else max(1, int(n * self.coreset_ratio))
        return m if self.bank_size is None else min(m, int(self.bank_size))

    def fit(self, batches, layers, extract) -> None:
        keys = self._candidates(layers)
        parts: dict[int | tuple[int, ...], list[torch.Tensor]] = {key: [] for key in keys}
        for x in batches:
            views = knn.rotations(x) if self.augment_references == "rotations" else x
            for v in views.split(x.shape[0]):  # the rotated views in batches of the references' size
                captured, _ = extract(v)
                for key in keys:
                    rows, mask, _ = self._rows([captured[m] for m in (key if isinstance(key, tuple) else (key,))])
                    parts[key].append(rows if mask is None else rows[mask.flatten().to(rows.device)])
        g = torch.Generator().manual_seed(self.seed)
        for key, chunks in parts.items():
            bank = torch.cat(chunks) if chunks else torch.zeros(0)
            if bank.shape[0] == 0:
                raise ValueError("method=patch_knn: the dataset offered no normal reference images" if not chunks else
                                 "method=patch_knn: method.mask_background left no foreground patch in the references "
                                 f"at layer {key if isinstance(key, int) else self.fused_name(key)}; use "
                                 "method.mask_background=false (a texture) or another method.mask_threshold")
            m = self._kept(bank.shape[0])
            if m < bank.shape[0]:
                idx = (knn.greedy_coreset(bank, m, self.seed) if self.coreset == "greedy"
                       else torch.randperm(bank.shape[0], generator=g)[:m])
                bank = bank[idx.to(bank.device)]
            self.banks[key] = knn.Bank(bank, self.metric)
        log.info("patch_knn banks: %s", {key if isinstance(key, int) else self.fused_name(key): tuple(b.rows.shape)
                                         for key, b in self.banks.items()})

    def _map(self, key, ts: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 1, h, w) map of one candidate (image-sized with ``smooth_sigma``)."""
        rows, mask, (h, w) = self._rows(ts)
        dist = knn.knn_distance(rows, self.banks[key], self.k, self.chunk).view(ts[0].shape[0], 1, h, w)
        if mask is not None:  # background patches get no anomaly score (AnomalyDINO)
            dist = dist * mask.to(dist.device).unsqueeze(1)
        return knn.smooth(dist, self.backbone.img_size, self.smooth_sigma) if self.smooth_sigma else dist

    def maps(self, captured):
        members = {m for group in self.fused for m in group}
        out = {}
        for layer, t in captured.items():
            if layer not in self.banks:
                if layer in members:  # captured only to be fused
                    continue
                raise RuntimeError(f"method=patch_knn: no memory bank for layer {layer}; fit() was not run")
            maps = [self._map(layer, [t])]
            for group in self.fused:
                if group[0] == layer:
                    fused = self._map(group, [captured[m] for m in group])
                    if fused.shape[-2:] != maps[0].shape[-2:]:
                        raise RuntimeError(f"method.fuse: {self.fused_name(group)}'s grid {tuple(fused.shape[-2:])} "
                                           f"is not layer {layer}'s {tuple(maps[0].shape[-2:])}: fuse layers whose "
                                           "lowest member has the finest grid")
                    maps.append(fused)
            out[layer] = torch.cat(maps, 1)
        return out
