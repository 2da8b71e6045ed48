"""The attention methods (ViTs): ``cls_attention``, each head's CLS-to-patch attention plus their mean, and
``rollout``, attention propagated through the residual stream."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..config.method_options import RolloutOptions
from ..backbones.attention import attention_blocks
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
            fuse = a.mean if self.head_fusion == "mean" else a.amax if self.head_fusion == "max" else a.amin
            rows.append(fuse(1))
        return torch.cat(rows, dim=1)

    def _layer(self, qk: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
        """One layer's (B, N, N) rollout factor: attention fused over heads, the smallest ``discard_ratio`` of the
        entries zeroed, the identity added for the residual connection, rows renormalised."""
        a = self._fused(*qk, scale)
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
        return a / a.sum(-1, keepdim=True)

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        """captured[layer] = (q, k), each (B, H, N, D), for layers 0..l -> maps (B, 1, h, w)."""
        return propagated(captured, self.backbone, self._layer, lambda so_far, a: a if so_far is None else a @ so_far)


def propagated(captured: dict[int, Any], backbone: Any, layer_matrix: Callable[[Any, float], torch.Tensor],
               step: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]) -> dict[int, torch.Tensor]:
    """Maps of a matrix propagated through the layers (rollout, attention relevance).

    Args:
        captured: per layer, what ``layer_matrix`` reads; every layer from 0 up.
        backbone: the ViT (its attention scale per layer, prefix count and patch grid).
        layer_matrix: (captured[layer], the layer's attention scale) -> its (B, N, N) matrix.
        step: (the running (B, N, N) matrix, or None before the first layer; this layer's) -> the new running one.

    Returns:
        maps[layer] (B, 1, h, w): the running matrix's CLS row after ``layer`` over the patch tokens (prefix
        tokens dropped by the model's count).
    """
    running: torch.Tensor | None = None
    out = {}
    for layer in sorted(captured):
        matrix = layer_matrix(captured[layer], backbone.attn_scale(layer))
        running = step(running, matrix)
        out[layer] = running[:, 0, backbone.num_prefix:].reshape(matrix.shape[0], 1, *backbone.grid)
    return out
