"""Gradient and CAM map methods, one map per layer, (B, 1, h, w), on the same axes as the other methods.

A CAM is one small class: a ``CAM`` subclass with its ``name`` and ``cam(activations, gradients)``, plus
its YAML (``conf/method/<name>.yaml``, family ``gradient``); ``CAM`` owns the target, the options and
the maps of every layer. ``layerscope.methods.registry`` lists every method; here:

``CAM`` subclasses (activations weighted by the gradient of the target score, all from the same single
backward pass), ``EigenCAM`` (gradient-free: the activations' first principal direction) and ``AttnGrad``
(ViTs: gradient-weighted attention relevance, propagated through the layers like a rollout); each
class's docstring names its paper.

The target score is the logit of ``target_class`` (or of each image's predicted class) for a model
with a classifier; without one (DINO, DINOv2) it is ``embedding_target``: ``norm``, the L2 norm of
the pooled embedding (the final CLS token of a ViT, the pooled features of a CNN), or ``cosine``
(ViTs), the cosine similarity of the final CLS token to the mean final patch token.
All gradient maps of a batch come from one forward and one backward pass
(``Backbone.extract_grad``).
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, Sequence

import torch

from ..config.method_options import AttnGradOptions, EigenCAMOptions, GradientOptions
from ..backbones.attention import attention_blocks
from .attention_maps import propagated
from .base import MapMethod


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


class GradientMethod(MapMethod):
    """A map method that needs the gradient of a target score; one map per layer, named like the method.

    Options (``GradientOptions``):
        target_class: class index explained, or None for each image's predicted class.
            Only for models with a classifier. From Python also one index per image, or a
            callable on the model's output returning a (B,) score (see ``Backbone.target_score``).
        embedding_target: the target of a model without a classifier: ``norm`` or ``cosine``
            (ViTs only); see the module docstring.
    """

    needs_grad = True
    Options = GradientOptions

    def __init__(self, backbone: Any, **options: Any) -> None:
        super().__init__(backbone, **options)
        check_target(backbone, self.options.target_class, self.options.embedding_target)
        self.target_class: Any = self.options.target_class
        self.embedding_target: str = self.options.embedding_target

    def map_names(self) -> list[str]:
        return [self.name]


class CAM(GradientMethod, metaclass=ABCMeta):
    """The CAM template: a layer's activations and the gradient of the target score with respect to them,
    both (B, C, h, w) (a ViT block's patch tokens on the patch grid, prefix tokens dropped by the model's
    own count), give its map (B, 1, h, w) float32, non-negative. A subclass writes ``cam`` alone.

    Note: with a CLS-token classifier the last block's patch tokens reach the score only through the
    CLS token of later layers, so the last layer's map is zero there (a known property of CAMs on ViTs).
    """

    capture = "features"

    @abstractmethod
    def cam(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) activations and their gradients -> (B, 1, h, w) float32 map."""

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        """captured[layer] = (activation, gradient), each (B, C, h, w) -> maps[layer] (B, 1, h, w)."""
        return {layer: self.cam(act, grad) for layer, (act, grad) in captured.items()}


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): ReLU of the activations weighted by their space-averaged gradients."""

    name = "gradcam"

    @staticmethod
    def cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        act, grad = activations.float(), gradients.float()
        weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): alpha_c in the paper
        return (weights * act).sum(1, keepdim=True).clamp(min=0)


class GradCAMPlusPlus(CAM):
    """Grad-CAM++ with the exponential-score closed form (Chattopadhay et al. 2018, eq. 19).

    ``alpha = g^2 / (2 g^2 + sum_ab(A) g^3)`` (0 where g = 0; 1e-6 added to the denominator), channel
    weights ``sum_ab(alpha relu(g))``, map ``relu(sum_c w_c A_c)`` (the form pytorch-grad-cam uses).
    Computed in float64: the denominator reaches 1e-11 on real layers, where float32 loses the weights.
    """

    name = "gradcam_pp"

    @staticmethod
    def cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        act, grad = activations.double(), gradients.double()
        g2 = grad ** 2
        g3 = g2 * grad
        total = act.sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        alpha = torch.where(grad != 0, g2 / (2 * g2 + total * g3 + 1e-6), torch.zeros_like(grad))
        weights = (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
        return (weights * act).sum(1, keepdim=True).clamp(min=0).float()


class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin 2020): ``relu(sum_c g_c * A_c)``, the gradient kept per position."""

    name = "hirescam"

    @staticmethod
    def cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients.float() * activations.float()).sum(1, keepdim=True).clamp(min=0)


class XGradCAM(CAM):
    """XGrad-CAM (Fu et al. 2020): weights ``sum_ab(g A) / (sum_ab(A) + 1e-7)`` (pytorch-grad-cam's eps), map
    ``relu(sum_c w_c A_c)``."""

    name = "xgradcam"

    @staticmethod
    def cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        act, grad = activations.float(), gradients.float()
        weights = (grad * act).sum(dim=(2, 3), keepdim=True) / (act.sum(dim=(2, 3), keepdim=True) + 1e-7)
        return (weights * act).sum(1, keepdim=True).clamp(min=0)


class LayerCAM(CAM):
    """LayerCAM (Jiang et al. 2021): ``relu(sum_c relu(g_c) * A_c)``, positive gradients per position."""

    name = "layercam"

    @staticmethod
    def cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients.float().clamp(min=0) * activations.float()).sum(1, keepdim=True).clamp(min=0)


class EigenCAM(MapMethod):
    """Eigen-CAM at every requested layer (gradient-free; see ``eigencam``); CNNs and ViTs.

    Options (``EigenCAMOptions``):
        centred: centre the activations before the SVD (pytorch-grad-cam's definition).
    """

    name = "eigencam"
    capture = "features"
    Options = EigenCAMOptions

    def __init__(self, backbone: Any, **options: Any) -> None:
        super().__init__(backbone, **options)
        if not isinstance(self.options.centred, bool):
            raise ValueError(f"method.centred={self.options.centred!r}: expected true or false")
        self.centred = self.options.centred

    def map_names(self) -> list[str]:
        return ["eigencam"]

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        return {layer: eigencam(t, self.centred) for layer, t in captured.items()}


class AttnGrad(GradientMethod):
    """Gradient-weighted attention relevance (Chefer et al. 2021), ViTs only.

    Per layer ``l``, ``Abar_l = mean_heads((grad(A_l) * A_l)^+)`` with ``A_l`` the attention
    probabilities and ``grad(A_l)`` the gradient of the target score; the relevance starts at the
    identity and is propagated as ``R <- R + Abar_l R``; the map of layer ``l`` is the CLS row of
    ``R`` after layer ``l`` over the patch tokens (prefix tokens dropped by the model's count).

    ``A_l`` is rebuilt from the block's own queries and keys, and its gradient is
    ``grad(o_l) v_l^T``, with ``o_l = A_l v_l`` the heads' output: the model keeps its fused
    attention, and only one N x N matrix per image exists at a time besides ``R`` (queries in
    chunks), the same bound as the rollout's.

    Options (``AttnGradOptions``):
        target_class, embedding_target: as for every ``GradientMethod``.
        chunk: query rows per block when building a layer's relevance.
    """

    name = "attn_grad"
    capture = "qk"
    Options = AttnGradOptions

    def __init__(self, backbone: Any, **options: Any) -> None:
        super().__init__(backbone, **options)
        chunk = self.options.chunk
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

    def maps(self, captured: dict[int, Any]) -> dict[int, torch.Tensor]:
        """captured[layer] = (q, k, v stacked (3, B, H, N, D), grad of o (B, H, N, D)) -> maps (B, 1, h, w)."""
        return propagated(captured, self.backbone, lambda c, scale: self._relevance(c[0], c[1], scale), _accumulate)


def _accumulate(relevance: torch.Tensor | None, abar: torch.Tensor) -> torch.Tensor:
    """``R <- R + Abar R``, from ``R = I``: (B, N, N)."""
    if relevance is None:
        b, n, _ = abar.shape
        relevance = torch.eye(n, device=abar.device).expand(b, n, n)
    return relevance + abar @ relevance
