"""The attention methods (ViTs): ``cls_attention``, each head's CLS-to-patch attention plus their mean, and
``rollout``, attention propagated through the residual stream."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..method_registry import RolloutOptions
from .attention import attention_blocks
from .base import MapMethod


class ClsAttention(MapMethod):
    """CLS-token attention of every head to the patch tokens (ViTs), plus the head mean."""

    name = "cls_attention"
    capture = "cls_attention"
    head_mean = True

    def num_maps(self) -> int:
        return self.backbone.num_heads

    def map_names(self) -> list[str]:
        return [str(h) for h in range(self.num_maps())]

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        return captured


class Rollout(MapMethod):
    """Attention rollout (Abnar & Zuidema 2020): attention propagated through the residual stream.

    Per layer, the attention matrix is fused over heads (``mean``/``max``/``min``), the lowest
    ``discard_ratio`` of its entries are zeroed (the CLS-to-CLS entry kept), the identity is
    added for the residual connection (``0.5 A + 0.5 I``), rows are renormalised, and the
    product with the previous layers' rollout is taken. The map of layer ``l`` is the CLS row
    of the rollout up to ``l`` over the patch tokens. Only one N x N matrix per image exists
    at a time besides the running product; per-head attention is built in query chunks.

    Options (``RolloutOptions``):
        head_fusion: ``mean``, ``max`` or ``min``.
        discard_ratio: fraction of the smallest fused attention entries zeroed, in [0, 1).
        chunk: query rows per block when building the attention matrix.
    """

    name = "rollout"
    capture = "qk"
    Options = RolloutOptions

    def __init__(self, backbone: Any, **options: Any) -> None:
        super().__init__(backbone, **options)
        o = self.options
        if o.head_fusion not in ("mean", "max", "min"):
            raise ValueError(f"method.head_fusion={o.head_fusion}: expected mean, max or min")
        if not 0 <= float(o.discard_ratio) < 1:
            raise ValueError(f"method.discard_ratio={o.discard_ratio}: expected a value in [0, 1)")
        self.head_fusion, self.discard_ratio, self.chunk = o.head_fusion, float(o.discard_ratio), int(o.chunk)

    def map_names(self) -> list[str]:
        return ["rollout"]

    def capture_layers(self, layers: Sequence[int]) -> list[int]:
        """Rollout at layer l needs every layer up to l."""
        return list(range(max(layers) + 1))

    def _fused(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        """(B, H, N, D) q, k -> (B, N, N) attention fused over heads."""
        rows = []
        for _, a in attention_blocks(q, k, scale, self.chunk):  # (B, H, c, N)
            rows.append(a.mean(1) if self.head_fusion == "mean" else a.amax(1) if self.head_fusion == "max" else a.amin(1))
        return torch.cat(rows, dim=1)

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        bb = self.backbone
        prefix, grid = bb.num_prefix, bb.grid
        rollout, out = None, {}
        for layer in sorted(captured):
            q, k = captured[layer]
            a = self._fused(q, k, bb.attn_scale(layer))
            b, n, _ = a.shape
            if self.discard_ratio > 0:
                flat = a.reshape(b, -1)
                drop = int(flat.shape[1] * self.discard_ratio)
                if drop:
                    idx = flat.topk(drop, dim=-1, largest=False).indices
                    flat = flat.scatter(-1, idx, 0.0)
                    flat[:, 0] = a.reshape(b, -1)[:, 0]  # CLS->CLS is never discarded
                a = flat.view(b, n, n)
            a = 0.5 * a + 0.5 * torch.eye(n, device=a.device)
            a = a / a.sum(-1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
            out[layer] = rollout[:, 0, prefix:].reshape(b, 1, *grid)
        return out
