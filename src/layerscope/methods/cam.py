"""Gradient and CAM map methods: Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM, Eigen-CAM and
gradient-weighted attention relevance.

They give maps on the same axes as the other methods, one map per layer, (B, 1, h, w):

- ``gradcam`` / ``gradcam_pp`` / ``hirescam`` / ``xgradcam`` / ``layercam`` (CNN stages and ViT
  block outputs on the patch grid): the layer's activations weighted by the gradient of the target
  score (Selvaraju et al. 2017; Chattopadhay et al. 2018; Draelos & Carin 2020; Fu et al. 2020;
  Jiang et al. 2021), all from the same single backward pass.
- ``eigencam`` (CNN and ViT, gradient-free): the projection of the activations on their first
  principal direction (Muhammad & Yeasin 2020), centred or not (``centred``).
- ``attn_grad`` (ViTs): gradient-weighted attention relevance (Chefer, Gur & Wolf 2021,
  "Generic attention-model explainability"), propagated through the layers like a rollout.

The target score is the logit of ``target_class`` (or of each image's predicted class) for a model
with a classifier; without one (DINO, DINOv2) it is ``embedding_target``: ``norm``, the L2 norm of
the pooled embedding (the final CLS token of a ViT, the pooled features of a CNN), or ``cosine``
(ViTs), the cosine similarity of the final CLS token to the mean final patch token.
All gradient maps of a batch come from one forward and one backward pass
(``Backbone.extract_grad``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..backbones.attention import attention_blocks
from .methods import MapMethod


def gradcam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: ReLU of the activations weighted by their space-averaged gradients.

    Args:
        act: activations (B, C, h, w).
        grad: gradients of the target score with respect to ``act``, (B, C, h, w).

    Returns:
        (B, 1, h, w) float32, non-negative.
    """
    act, grad = act.float(), grad.float()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): alpha_c in the paper
    return (weights * act).sum(1, keepdim=True).clamp(min=0)


def gradcam_pp(act: torch.Tensor, grad: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Grad-CAM++ with the exponential-score closed form (Chattopadhay et al. 2018, eq. 19).

    ``alpha = g^2 / (2 g^2 + sum_ab(A) g^3)`` (0 where g = 0), channel weights
    ``sum_ab(alpha relu(g))``, map ``relu(sum_c w_c A_c)`` (the form pytorch-grad-cam uses).
    Computed in float64: the denominator reaches 1e-11 on real layers, where float32 loses the weights.

    Args:
        act: activations (B, C, h, w).
        grad: gradients of the target score with respect to ``act``, (B, C, h, w).
        eps: added to the denominator.

    Returns:
        (B, 1, h, w) float32, non-negative.
    """
    act, grad = act.double(), grad.double()
    g2 = grad ** 2
    g3 = g2 * grad
    total = act.sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    alpha = torch.where(grad != 0, g2 / (2 * g2 + total * g3 + eps), torch.zeros_like(grad))
    weights = (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * act).sum(1, keepdim=True).clamp(min=0).float()


def hirescam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): ``relu(sum_c g_c * A_c)``, the gradient kept per position.

    Args:
        act, grad: activations and their gradients, (B, C, h, w).

    Returns:
        (B, 1, h, w) float32, non-negative.
    """
    return (grad.float() * act.float()).sum(1, keepdim=True).clamp(min=0)


def xgradcam(act: torch.Tensor, grad: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): weights ``sum_ab(g A) / (sum_ab(A) + eps)``, map ``relu(sum_c w_c A_c)``.

    Args:
        act, grad: activations and their gradients, (B, C, h, w).
        eps: added to the denominator (pytorch-grad-cam's 1e-7).

    Returns:
        (B, 1, h, w) float32, non-negative.
    """
    act, grad = act.float(), grad.float()
    weights = (grad * act).sum(dim=(2, 3), keepdim=True) / (act.sum(dim=(2, 3), keepdim=True) + eps)
    return (weights * act).sum(1, keepdim=True).clamp(min=0)


def layercam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``relu(sum_c relu(g_c) * A_c)``, positive gradients per position.

    Args:
        act, grad: activations and their gradients, (B, C, h, w).

    Returns:
        (B, 1, h, w) float32, non-negative.
    """
    return (grad.float().clamp(min=0) * act.float()).sum(1, keepdim=True).clamp(min=0)


def eigencam(act: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """Eigen-CAM: activations projected on their first right singular vector, ReLU.

    ``centred=False`` (the paper's form): the SVD of the activations as they are (``features``'
    ``pca`` is a centred variant). ``centred=True`` (pytorch-grad-cam's ``EigenCAM``): each channel's
    mean over positions is removed before the SVD and the projection. The singular vector's sign is
    arbitrary; either way it is fixed so that the projection of the activations as they are sums
    to a positive value (the mean activation lies on the positive side of it).

    Args:
        act: activations (B, C, h, w).
        centred: centre the activations per channel before the SVD.

    Returns:
        (B, 1, h, w) float32, non-negative.
    """
    b, c, h, w = act.shape
    x = act.float().flatten(2).transpose(1, 2)  # (B, hw, C)
    y = x - x.mean(dim=1, keepdim=True) if centred else x
    _, _, vh = torch.linalg.svd(y, full_matrices=False)
    v = vh[:, 0, :, None]  # (B, C, 1)
    sign = torch.sign((x @ v).sum(1, keepdim=True))  # (B, 1, 1)
    proj = (y @ (v * torch.where(sign == 0, torch.ones_like(sign), sign))).squeeze(-1)  # (B, hw)
    return proj.clamp(min=0).view(b, 1, h, w)


def check_target(backbone, target_class: object, embedding_target: str = "norm") -> None:
    """Raise ValueError (one line, naming the option) unless the target fits the model.

    Args:
        backbone: the model.
        target_class: None, a class index, one index per image, or a callable (checked when called).
        embedding_target: the target of a model without a classifier.
    """
    if target_class is not None and not callable(target_class):
        many = isinstance(target_class, (list, tuple))
        for value in (list(target_class) if many else [target_class]):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"method.target_class={value!r}: expected a class index >= 0 or null "
                                 "(the predicted class)")
            n = backbone.num_classes
            if not n:
                raise ValueError(f"method.target_class={value}: model {backbone.name} has no classifier; "
                                 f"leave it null (the target is then method.embedding_target={embedding_target})")
            if value >= n:
                raise ValueError(f"method.target_class={value} is out of range: model {backbone.name} has "
                                 f"{n} classes, valid 0..{n - 1} (or null for the predicted class)")
    if embedding_target not in backbone.embedding_targets:
        raise ValueError(f"method.embedding_target={embedding_target}: expected "
                         f"{' or '.join(backbone.embedding_targets)} for model {backbone.name} ({backbone.kind})")


class _GradMethod(MapMethod):
    """A map method that needs the gradient of a target score; one map per layer.

    Args:
        backbone: the model.
        target_class: class index explained, or None for each image's predicted class.
            Only for models with a classifier. From Python also one index per image, or a
            callable on the model's output returning a (B,) score (see ``Backbone.target_score``).
        embedding_target: the target of a model without a classifier: ``norm`` or ``cosine``
            (ViTs only); see the module docstring.
    """

    needs_grad = True

    def __init__(self, backbone, target_class: object = None, embedding_target: str = "norm"):
        super().__init__(backbone)
        check_target(backbone, target_class, embedding_target)
        self.target_class, self.embedding_target = target_class, embedding_target

    def num_maps(self) -> int:
        return 1

    def map_names(self) -> list[str]:
        return [self.name]


class GradCAM(_GradMethod):
    """Grad-CAM at every requested layer: CNN stage outputs, or ViT block outputs on the patch grid.

    For a ViT, the block output's patch tokens (prefix tokens, CLS and registers, dropped by the
    model's own count) are the activations. Note: with a CLS-token classifier the last block's
    patch tokens reach the score only through the CLS token of later layers, so the last
    layer's map is zero there (a known property of Grad-CAM on ViTs).
    """

    name = "gradcam"
    capture = "features"

    def maps(self, captured: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, torch.Tensor]:
        """captured[layer] = (activation, gradient), each (B, C, h, w) -> maps[layer] (B, 1, h, w)."""
        return {layer: gradcam(act, grad) for layer, (act, grad) in captured.items()}


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ at every requested layer (see ``gradcam_pp``)."""

    name = "gradcam_pp"

    def maps(self, captured):
        return {layer: gradcam_pp(act, grad) for layer, (act, grad) in captured.items()}


class HiResCAM(GradCAM):
    """HiResCAM at every requested layer (see ``hirescam``)."""

    name = "hirescam"

    def maps(self, captured):
        return {layer: hirescam(act, grad) for layer, (act, grad) in captured.items()}


class XGradCAM(GradCAM):
    """XGrad-CAM at every requested layer (see ``xgradcam``)."""

    name = "xgradcam"

    def maps(self, captured):
        return {layer: xgradcam(act, grad) for layer, (act, grad) in captured.items()}


class LayerCAM(GradCAM):
    """LayerCAM at every requested layer (see ``layercam``)."""

    name = "layercam"

    def maps(self, captured):
        return {layer: layercam(act, grad) for layer, (act, grad) in captured.items()}


class EigenCAM(MapMethod):
    """Eigen-CAM at every requested layer (gradient-free; see ``eigencam``); CNNs and ViTs.

    Args:
        backbone: the model.
        centred: centre the activations before the SVD (pytorch-grad-cam's definition).
    """

    name = "eigencam"
    capture = "features"

    def __init__(self, backbone, centred: bool = False):
        super().__init__(backbone)
        if not isinstance(centred, bool):
            raise ValueError(f"method.centred={centred!r}: expected true or false")
        self.centred = centred

    def num_maps(self) -> int:
        return 1

    def map_names(self) -> list[str]:
        return ["eigencam"]

    def maps(self, captured):
        return {layer: eigencam(t, self.centred) for layer, t in captured.items()}


class AttnGrad(_GradMethod):
    """Gradient-weighted attention relevance (Chefer et al. 2021), ViTs only.

    Per layer ``l``, ``Abar_l = mean_heads((grad(A_l) * A_l)^+)`` with ``A_l`` the attention
    probabilities and ``grad(A_l)`` the gradient of the target score; the relevance starts at the
    identity and is propagated as ``R <- R + Abar_l R``; the map of layer ``l`` is the CLS row of
    ``R`` after layer ``l`` over the patch tokens (prefix tokens dropped by the model's count).

    ``A_l`` is rebuilt from the block's own queries and keys, and its gradient is
    ``grad(o_l) v_l^T``, with ``o_l = A_l v_l`` the heads' output: the model keeps its fused
    attention, and only one N x N matrix per image exists at a time besides ``R`` (queries in
    chunks), the same bound as the rollout's.

    Args:
        backbone, target_class, embedding_target: as for ``GradCAM``.
        chunk: query rows per block when building a layer's relevance.
    """

    name = "attn_grad"
    capture = "qk"

    def __init__(self, backbone, target_class: int | None = None, embedding_target: str = "norm", chunk: int = 1024):
        super().__init__(backbone, target_class, embedding_target)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"method.chunk={chunk!r}: expected an int >= 1 (query rows per block)")
        self.chunk = chunk

    def capture_layers(self, layers: Sequence[int]) -> list[int]:
        """The relevance at layer l needs every layer up to l."""
        return list(range(max(layers) + 1))

    def _relevance(self, qkv: torch.Tensor, grad_o: torch.Tensor, scale: float) -> torch.Tensor:
        """(3, B, H, N, D) q, k, v and (B, H, N, D) grad of the output -> (B, N, N) head-mean relevance."""
        q, k, v = qkv
        rows = []
        for start, a in attention_blocks(q, k, scale, self.chunk):  # (B, H, c, N): the attention probabilities
            gc = grad_o[:, :, start:start + self.chunk].float()
            ga = gc @ v.float().transpose(-2, -1)  # (B, H, c, N): d score / d A, since o = A v
            rows.append((ga * a).clamp(min=0).mean(1))
        return torch.cat(rows, dim=1)

    def maps(self, captured):
        """captured[layer] = (q, k, v stacked (3, B, H, N, D), grad of o (B, H, N, D)) -> maps (B, 1, h, w)."""
        bb = self.backbone
        prefix, grid = bb.num_prefix, bb.grid
        relevance, out = None, {}
        for layer in sorted(captured):
            qkv, grad_o = captured[layer]
            abar = self._relevance(qkv, grad_o, bb.attn_scale(layer))
            b, n, _ = abar.shape
            if relevance is None:
                relevance = torch.eye(n, device=abar.device).expand(b, n, n)
            relevance = relevance + abar @ relevance
            out[layer] = relevance[:, 0, prefix:].reshape(b, 1, *grid)
        return out
