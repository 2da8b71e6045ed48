"""Vision Transformers: timm (DINO, DINOv2, bundled DINOv2) and Hugging Face transformers (supervised ViT)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import cls_attention
from .distance import EXTRAS as DISTANCE_EXTRAS
from .base import capped_cells
from .distance import attention_distance
from .base import Backbone, Hook
from .weights import WeightsError, check_source, hub_folder, timm_state_dict


class _ViT(Backbone):
    """Shared capture logic; subclasses say where q, k and block outputs live."""

    kind = "vit"
    captures = ("cls_attention", "features", "qk")
    embedding_targets = ("norm", "cosine")
    # of each block's output (before any final norm): patch-token mean, CLS, the patch tokens on their grid
    representation_kinds = ("mean", "cls", "patches")
    num_prefix: int
    num_heads: int
    patch_size: int
    has_cls: bool = True  # token 0 is a CLS token (timm class_token=False models, SigLIP's, have none)

    def _without_cls(self) -> None:
        """A ViT without a CLS token: no CLS representation, no cosine-to-CLS gradient target."""
        self.has_cls = False
        self.representation_kinds = ("mean",)
        self.embedding_targets = ("norm",)

    def check_capture(self, capture: str, method: str | None = None) -> None:
        """As ``Backbone.check_capture``; also refuses the CLS-attention methods on a ViT without a CLS token
        (they would read patch 0's attention row as the CLS token's)."""
        super().check_capture(capture, method)
        if capture in ("cls_attention", "qk") and not self.has_cls:
            raise ValueError(f"method={method or capture} reads the CLS token's attention; model {self.name} has no "
                             "CLS token (timm class_token=False); use method=features or a gradient method "
                             "(gradcam, gradcam_pp, hirescam, xgradcam, layercam, eigencam)")

    @property
    def grid(self) -> tuple[int, int]:
        g = self.img_size // self.patch_size
        return g, g

    def _qk_modules(self, layer: int) -> tuple[nn.Module, nn.Module, float]:
        """Modules whose outputs are this layer's q and k, and the attention scale."""
        raise NotImplementedError

    def attn_scale(self, layer: int) -> float:
        """The attention scale of ``layer`` (usually head_dim ** -0.5)."""
        return self._qk_modules(layer)[2]

    def _to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """A q/k module output -> (B, H, N, D)."""
        return t

    def _block(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def layer_names(self) -> list[str]:
        """The module name of each layer's block in the wrapped model (``blocks.3``, ``encoder.layer.3``)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        return [names[id(self._block(i))] for i in range(self.num_layers)]

    def _value_and_output(self, layer: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        """(module whose output holds v, its output -> v (B, H, N, D), module whose first input is the
        heads' merged attention output softmax(q k^T s) v, (B, N, H D))."""
        raise NotImplementedError

    def _tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Block output tokens (B, N, C) -> patch tokens on the grid (B, C, h, w), prefix tokens dropped."""
        b, _, c = tokens.shape
        return tokens[:, self.num_prefix:].transpose(1, 2).reshape(b, c, *self.grid)

    def _cosine_target(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens (B, N, C) -> cosine similarity of the CLS token to the mean patch token, (B,)."""
        return F.cosine_similarity(tokens[:, 0].float(), tokens[:, self.num_prefix:].float().mean(1), dim=-1)

    def capture_grad(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, object]]:
        store: dict[int, object] = {}
        hooks: list[tuple[nn.Module, Hook]] = []
        for layer in layers:
            if what == "qk":
                q_mod, k_mod, _ = self._qk_modules(layer)
                v_mod, v_heads, o_mod = self._value_and_output(layer)
                kept: dict[str, torch.Tensor] = {}
                store[layer] = kept

                def keep(name, fn=self._to_heads, kept=kept):
                    return lambda _m, _i, out: kept.__setitem__(name, fn(out).detach())

                def keep_o(_m, inputs, _out, kept=kept):
                    kept["o"] = inputs[0]  # in the graph: the gradient of softmax(qk^T s) is grad(o) v^T

                hooks += [(q_mod, keep("q")), (k_mod, keep("k")), (v_mod, keep("v", v_heads)), (o_mod, keep_o)]
            else:
                def keep_tokens(_m, _i, out, layer=layer):
                    store[layer] = out[0] if isinstance(out, tuple) else out  # (B, N, C), what flows on

                hooks.append((self._block(layer), keep_tokens))
        return hooks, store

    def grad_captures(self, kept: object, grad: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
        if what == "qk":
            b, n, _ = grad.shape
            grad_heads = grad.detach().view(b, n, self.num_heads, -1).transpose(1, 2)  # merged heads -> (B, H, N, D)
            return torch.stack([kept["q"], kept["k"], kept["v"]]), grad_heads
        return self._tokens_to_grid(kept.detach()), self._tokens_to_grid(grad)

    def capture(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, torch.Tensor]]:
        store: dict[int, torch.Tensor] = {}
        hooks: list[tuple[nn.Module, Hook]] = []
        grid, prefix = self.grid, self.num_prefix
        for layer in layers:
            if what == "cls_attention":
                q_mod, k_mod, scale = self._qk_modules(layer)
                pending: dict[str, torch.Tensor] = {}

                def keep_q(_m, _i, out, pending=pending):
                    pending["q"] = self._to_heads(out)

                def use_k(_m, _i, out, pending=pending, layer=layer, scale=scale):
                    store[layer] = cls_attention(pending.pop("q"), self._to_heads(out), scale, prefix, grid)

                hooks += [(q_mod, keep_q), (k_mod, use_k)]
            elif what == "qk":  # queries and keys themselves, (B, H, N, D) each, for methods such as rollout
                q_mod, k_mod, _ = self._qk_modules(layer)
                pair: dict[str, torch.Tensor] = {}

                def keep_q2(_m, _i, out, pair=pair):
                    pair["q"] = self._to_heads(out)

                def keep_k2(_m, _i, out, pair=pair, layer=layer):
                    store[layer] = torch.stack([pair.pop("q"), self._to_heads(out)])  # (2, B, H, N, D)

                hooks += [(q_mod, keep_q2), (k_mod, keep_k2)]
            else:
                def keep_tokens(_m, _i, out, layer=layer):
                    tokens = out[0] if isinstance(out, tuple) else out  # (B, N, C)
                    b, _, c = tokens.shape
                    store[layer] = tokens[:, prefix:].transpose(1, 2).reshape(b, c, *grid)

                hooks.append((self._block(layer), keep_tokens))
        return hooks, store


    def extra_hooks(self, layers: Sequence[int], extras: Sequence[str]
                    ) -> tuple[list[tuple[nn.Module, Hook]], dict[str, dict[int, torch.Tensor]]]:
        """``rep_mean``/``rep_cls`` from each block's output tokens (B, D), ``rep_patches`` its patch tokens on
        their grid (B, h, w, D) (``base.capped_cells``); ``attention_distance`` (B, H)
        from the block's own q and k (``maps.distance``, queries in chunks; prefix tokens left out by the
        ``renormalised`` rule; ``attention_distance_raw``: by the ``raw`` rule)."""
        known = (*DISTANCE_EXTRAS.values(), *(f"rep_{kind}" for kind in self.representation_kinds))
        if unknown := [e for e in extras if e not in known]:
            raise ValueError(f"model {self.name} ({self.kind}) cannot capture {', '.join(unknown)}")
        store: dict[str, dict[int, torch.Tensor]] = {e: {} for e in extras}
        hooks: list[tuple[nn.Module, Hook]] = []
        grid, prefix, patch = self.grid, self.num_prefix, self.patch_size
        for layer in layers:
            rules = [rule for rule, name in DISTANCE_EXTRAS.items() if name in store]
            if rules:
                q_mod, k_mod, scale = self._qk_modules(layer)
                pending: dict[str, torch.Tensor] = {}

                def keep_q(_m, _i, out, pending=pending):
                    pending["q"] = self._to_heads(out).detach()

                def use_k(_m, _i, out, pending=pending, layer=layer, scale=scale, rules=rules):
                    q, k = pending.pop("q"), self._to_heads(out).detach()
                    for rule in rules:
                        store[DISTANCE_EXTRAS[rule]][layer] = attention_distance(q, k, scale, prefix, grid, patch,
                                                                                 rule=rule)

                hooks += [(q_mod, keep_q), (k_mod, use_k)]
            if "rep_mean" in store or "rep_cls" in store or "rep_patches" in store:
                def pool(_m, _i, out, layer=layer):
                    tokens = (out[0] if isinstance(out, tuple) else out).detach().float()  # (B, N, D)
                    if "rep_mean" in store:
                        store["rep_mean"][layer] = tokens[:, prefix:].mean(1)  # patch tokens only
                    if "rep_cls" in store:
                        store["rep_cls"][layer] = tokens[:, 0]
                    if "rep_patches" in store:  # (B, h, w, D), at most CAPTURE_CELLS a side
                        cells = tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
                        store["rep_patches"][layer] = capped_cells(cells)

                hooks.append((self._block(layer), pool))
        return hooks, store


class TimmViT(_ViT):
    """A timm ``VisionTransformer`` (DINO, DINOv2, DINOv2 with registers).

    Args:
        name: config name, e.g. ``dino_vits8``.
        arch: timm architecture, e.g. ``vit_small_patch8_224``.
        img_size: input side in pixels; the position embedding is resampled (bicubic,
            no antialias, as DINO does) when it differs from the checkpoint's grid.
        mean, std: input normalisation.
        pretrained: False builds a random-init model (no weights needed).
        weights: ``source`` (hub/file/bundled), ``hub_id`` (timm pretrained tag),
            ``path`` (file), ``bundle`` (bundled).
        num_classes: classifier size (0 = no head).
        model_kwargs: extra ``timm.create_model`` arguments (depth, embed_dim, reg_tokens, ...).
    """

    def __init__(self, name: str, arch: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                 pretrained: bool = True, weights: Mapping[str, Any] | None = None, num_classes: int = 0,
                 model_kwargs: Mapping[str, Any] | None = None):
        import timm

        super().__init__(name, img_size, mean, std)
        self.weights_cfg = dict(weights or {})
        self.pretrained = pretrained
        check_source(name, self.weights_cfg, pretrained)
        model = timm.create_model(arch, pretrained=False, img_size=self.img_size, num_classes=num_classes,
                                  **dict(model_kwargs or {}))
        self._adopt(model, arch)

    @classmethod
    def from_model(cls, model: nn.Module, name: str, img_size: int, mean: Sequence[float],
                   std: Sequence[float]) -> "TimmViT":
        """Wrap an existing timm ``VisionTransformer`` (its weights as they are; put in eval mode).

        Raises:
            ValueError: not a ViT whose attention layerscope can read, or an ``img_size`` it does not take.
        """
        self = cls.__new__(cls)
        Backbone.__init__(self, name, img_size, mean, std)
        self.weights_cfg, self.pretrained = {}, False
        own = getattr(model.patch_embed, "img_size", None)
        if own is not None and tuple(own) != (self.img_size, self.img_size) and not getattr(
                model.patch_embed, "dynamic_img_size", False) and getattr(model.patch_embed, "strict_img_size", True):
            raise ValueError(f"img_size={img_size}: this timm model takes {tuple(own)} px; create it with "
                             f"img_size={img_size} (or dynamic_img_size=True), or leave img_size unset")
        self._adopt(model, getattr(model, "default_cfg", {}).get("architecture", type(model).__name__))
        return self

    def _adopt(self, model: nn.Module, arch: str) -> None:
        """Take ``model`` as this backbone's network and read its layout."""
        self.model = model
        self.model.eval()
        attn = self.model.blocks[0].attn
        if not hasattr(attn, "q_norm") or not hasattr(attn, "k_norm"):
            raise ValueError(f"model {self.name}: timm arch {arch} has no q_norm/k_norm in its attention; not supported")
        self.num_heads = attn.num_heads
        self.num_prefix = self.model.num_prefix_tokens
        if getattr(self.model, "cls_token", None) is None:
            self._without_cls()
        self.patch_size = self.model.patch_embed.patch_size[0]
        if self.img_size < self.patch_size or self.img_size % self.patch_size:
            raise ValueError(f"model.img_size={self.img_size}: expected a positive multiple of the patch size "
                             f"{self.patch_size}")
        num_classes = int(self.model.num_classes)
        if num_classes:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            self.labels = [info.index_to_description(i) for i in range(num_classes)] if num_classes == 1000 else None

    @property
    def num_layers(self) -> int:
        return len(self.model.blocks)

    def _qk_modules(self, layer: int) -> tuple[nn.Module, nn.Module, float]:
        attn = self.model.blocks[layer].attn
        return attn.q_norm, attn.k_norm, attn.scale

    def _block(self, layer: int) -> nn.Module:
        return self.model.blocks[layer]

    def _value_and_output(self, layer: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        attn = self.model.blocks[layer].attn
        h = attn.num_heads

        def v_heads(qkv: torch.Tensor) -> torch.Tensor:
            b, n, _ = qkv.shape
            return qkv.reshape(b, n, 3, h, -1)[:, :, 2].transpose(1, 2)  # timm packs q, k, v in one Linear

        # timm >= 1.0.20 applies attn.norm (Identity unless scale_norm) to the merged heads before proj
        return attn.qkv, v_heads, attn.norm if hasattr(attn, "norm") else attn.proj

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def embedding_score(self, x: torch.Tensor, how: str) -> torch.Tensor:
        tokens = self.model.forward_features(x)  # (B, N, C) after the final norm
        if how == "cosine":
            return self._cosine_target(tokens)
        return self.model.forward_head(tokens, pre_logits=True).float().norm(dim=-1)

    def load_weights(self) -> None:
        """Fill the model from its weight source (no-op when ``pretrained`` is False)."""
        if not self.pretrained:
            return
        from timm.layers import resample_abs_pos_embed
        from timm.models.vision_transformer import checkpoint_filter_fn

        sd = timm_state_dict(self.name, self.weights_cfg)
        pos = sd.get("pos_embed")
        if pos is not None and (pos.ndim != 3 or pos.shape[-1] != self.model.pos_embed.shape[-1]):
            raise WeightsError(f"model {self.name}: checkpoint tensors of the wrong shape for {type(self.model).__name__}: "
                               f"pos_embed {tuple(pos.shape)} (model {tuple(self.model.pos_embed.shape)}); is it "
                               "another model size?")
        if pos is not None and pos.shape != self.model.pos_embed.shape:
            n_old = pos.shape[1] - (0 if self.model.no_embed_class else self.model.num_prefix_tokens - self.model.num_reg_tokens)
            old = int(round(n_old ** 0.5))
            sd["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=list(self.grid), old_size=[old, old],
                num_prefix_tokens=0 if self.model.no_embed_class else 1, interpolation="bicubic", antialias=False)
        sd = checkpoint_filter_fn(sd, self.model)
        self._load_checked(self.model, sd)

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        out = self.model(x)
        return out if self.model.num_classes else None

    def forward_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class HFViT(_ViT):
    """A Hugging Face transformers ViT: ``ViTForImageClassification`` (the supervised
    ``google/vit-base-patch16-224``) from a config, or any wrapped model with standard q/k
    self-attention (``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``DeiTModel``, their
    classification heads) through ``from_model``.

    Runs with the model's own attention (SDPA by default); the CLS rows come from the q/k
    projections, so no eager ``output_attentions`` pass is needed. Prefix tokens are the CLS token,
    DeiT's distillation token and DINOv2's registers, counted from the model's embeddings.

    Args:
        name, img_size, mean, std, pretrained: as for ``TimmViT``.
        weights: ``source`` (hub/file), ``hub_id`` (Hugging Face repo), ``path`` (model folder).
        config: ``ViTConfig`` fields used for random init (hub or folder configs win when pretrained).
    """

    def __init__(self, name: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                 pretrained: bool = True, weights: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None):
        from transformers import ViTConfig, ViTForImageClassification

        super().__init__(name, img_size, mean, std)
        self.weights_cfg = dict(weights or {})
        self.pretrained = pretrained
        check_source(name, self.weights_cfg, pretrained)
        if self.weights_cfg.get("source", "hub") == "bundled":
            raise ValueError(f"model {name}: no bundled weights exist for this model; use hub or file")
        self.model = ViTForImageClassification(ViTConfig(**dict(config or {})))
        self._set_up()

    @classmethod
    def from_model(cls, model: nn.Module, name: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                   pretrained: bool = False, weights: Mapping[str, Any] | None = None) -> "HFViT":
        """Wrap an existing transformers vision model (its weights as they are; put in eval mode).

        ``pretrained`` and ``weights`` say where ``load_weights`` reads the weights of the same
        class from (a hub id or a folder); the default keeps the model's own.

        Raises:
            ValueError: a model without standard q/k self-attention layers.
        """
        self = cls.__new__(cls)
        Backbone.__init__(self, name, img_size, mean, std)
        self.weights_cfg, self.pretrained = dict(weights or {}), pretrained
        self.model = model
        self._set_up()
        return self

    @staticmethod
    def readable(model: nn.Module) -> bool:
        """Whether ``model`` is a transformers model whose layers have q/k/v projections layerscope reads."""
        base = getattr(model, "base_model", None)
        layers = getattr(base, "layers", None) or getattr(getattr(base, "encoder", None), "layer", None)
        if base is None or not layers or getattr(base, "embeddings", None) is None:
            return False
        attn = getattr(layers[0], "attention", None)
        return hasattr(attn, "q_proj") and hasattr(attn, "k_proj") or hasattr(getattr(attn, "attention", None), "query")

    def _set_up(self) -> None:
        cfg = self.model.config
        self.model.eval()
        if not self.readable(self.model):
            raise ValueError(f"model {self.name}: {type(self.model).__name__} has no ViT layers with q/k projections "
                             "that layerscope can read; wrap it with layers=[module names] for features and CAMs")
        base = self.model.base_model
        emb = base.embeddings
        self.num_heads = cfg.num_attention_heads
        registers = getattr(emb, "register_tokens", None)
        self.num_prefix = (1 + int(getattr(emb, "distillation_token", None) is not None)
                           + (int(registers.shape[1]) if registers is not None else 0))
        patch = cfg.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        if self.img_size < self.patch_size or self.img_size % self.patch_size:
            raise ValueError(f"model.img_size={self.img_size}: expected a positive multiple of the patch size "
                             f"{self.patch_size}")
        self._has_head = self.model is not base
        import inspect

        self._kwargs = ({"interpolate_pos_encoding": True}
                        if "interpolate_pos_encoding" in inspect.signature(base.forward).parameters else {})
        self.labels = ([cfg.id2label[i] for i in range(cfg.num_labels)] if self._has_head and cfg.num_labels
                       else None)

    def load_weights(self) -> None:
        if not self.pretrained:
            return
        w = self.weights_cfg
        if w.get("source", "hub") == "file":
            if not w.get("path"):
                raise WeightsError(f"model {self.name}: model.weights.source=file needs model.weights.path (a model folder)")
            folder = w["path"]
        else:
            folder = hub_folder(w["hub_id"], self.name)
        try:
            self.model = type(self.model).from_pretrained(folder, attn_implementation="sdpa")
        except OSError as e:
            raise WeightsError(f"model {self.name}: cannot read a Hugging Face ViT from {folder}: {e}") from e
        self._set_up()

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def _layer(self, layer: int) -> nn.Module:
        base = self.model.base_model
        return base.layers[layer] if hasattr(base, "layers") else base.encoder.layer[layer]  # transformers >= 5 / 4

    def _qk_modules(self, layer: int) -> tuple[nn.Module, nn.Module, float]:
        attn = self._layer(layer).attention
        if hasattr(attn, "q_proj"):  # transformers >= 5
            return attn.q_proj, attn.k_proj, attn.scaling
        inner = attn.attention
        return inner.query, inner.key, inner.attention_head_size ** -0.5

    def _to_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, -1).transpose(1, 2)

    def _block(self, layer: int) -> nn.Module:
        return self._layer(layer)

    def _value_and_output(self, layer: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], nn.Module]:
        attn = self._layer(layer).attention
        if hasattr(attn, "v_proj"):  # transformers >= 5
            return attn.v_proj, self._to_heads, attn.o_proj
        return attn.attention.value, self._to_heads, attn.output.dense

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_labels) if self._has_head else 0

    def embedding_score(self, x: torch.Tensor, how: str) -> torch.Tensor:
        tokens = self.model.base_model(pixel_values=x, **self._kwargs).last_hidden_state
        return self._cosine_target(tokens) if how == "cosine" else tokens[:, 0].float().norm(dim=-1)

    def forward_output(self, x: torch.Tensor) -> object:
        return self.model(pixel_values=x, **self._kwargs)

    def output_logits(self, out: object) -> torch.Tensor | None:
        return out.logits if self._has_head else None

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.output_logits(self.forward_output(x))
