"""What every backbone answers, ViT or CNN, and the hook context manager that captures layers."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

Hook = Callable[[nn.Module, tuple, object], None]
CAPTURE_CELLS = 32  # rep_patches: at most this many cells a side leave the pass (a CNN's stem has 112 x 112)


def capped_cells(maps: torch.Tensor) -> torch.Tensor:
    """A layer's (B, D, h, w) map as (B, h, w, D) cells, average-pooled to at most ``CAPTURE_CELLS`` a side
    (bounded memory and cache; the ``patches`` kind pools further, ``representation_grid``)."""
    h, w = maps.shape[-2:]
    if h > CAPTURE_CELLS or w > CAPTURE_CELLS:
        maps = torch.nn.functional.adaptive_avg_pool2d(maps, (min(h, CAPTURE_CELLS), min(w, CAPTURE_CELLS)))
    return maps.permute(0, 2, 3, 1).contiguous()


@contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register forward hooks for the duration of a ``with`` block; always removed after."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def select_indices(spec: object, n: int, what: str) -> list[int]:
    """Resolve a user's layer/head selection to sorted, unique, non-negative indices.

    Args:
        spec: ``"all"``/``None``, an int, or a list of ints; negative ints count from the end.
        n: how many there are.
        what: the option's name for error messages (``"layer"``, ``"head"``).

    Raises:
        ValueError: an index outside ``[-n, n)`` or a value that is not an int; the message
            names the option and the valid range.
    """
    if spec is None or spec == "all":
        return list(range(n))
    items = list(spec) if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") and not isinstance(spec, str) else [spec]
    if not items:
        raise ValueError(f"{what}=[]: select at least one {what} (0..{n - 1}, negative from the end, or all)")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{what}={item!r}: expected an int in [{-n}, {n - 1}] or 'all'")
        if not -n <= item < n:
            raise ValueError(f"{what}={item} is out of range: this model has {n} {what}s, valid {-n}..{n - 1} (or all)")
        out.append(item % n)
    return sorted(set(out))


class Backbone(nn.Module):
    """A vision model that yields per-layer maps ``(B, K, h, w)`` from one forward pass.

    Subclasses build the network in ``__init__`` (random init, cheap) so that layer and head
    selections are checked before weights load; ``load_weights`` then fills it.

    Attributes:
        name: the model config's name (``dino_vits8``).
        kind: ``"vit"`` or ``"cnn"``.
        img_size: square input side in pixels.
        mean, std: per-channel normalisation of RGB in [0, 1].
        labels: class names when the model has a classifier head, else None.
    """

    kind: str = ""
    captures: tuple[str, ...] = ()  # what ``capture`` can hook: "cls_attention", "features"
    embedding_targets: tuple[str, ...] = ("norm",)  # gradient targets of a model without a classifier
    representation_kinds: tuple[str, ...] = ("mean",)  # pooled representations per layer (save_representations)

    def __init__(self, name: str, img_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.name = name
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
            raise ValueError(f"model.img_size={img_size}: expected a positive int (pixels)")
        self.img_size = int(img_size)
        for key, values in (("mean", mean), ("std", std)):
            try:
                numbers = [float(v) for v in values]
            except (TypeError, ValueError):
                numbers = []
            if len(numbers) != 3 or not all(math.isfinite(v) and (v > 0 or key == "mean") for v in numbers):
                raise ValueError(f"model.{key}={values!r}: expected 3 {'positive' if key == 'std' else 'finite'} "
                                 "numbers (R, G, B)")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.labels: list[str] | None = None

    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> the model's input."""
        return (x - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """Forward pass on a normalised batch; class logits (B, C) or None without a head."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Classifier size; 0 for a backbone without a classifier (DINO, DINOv2)."""
        return len(self.labels) if self.labels else 0

    def embedding_score(self, x: torch.Tensor, how: str) -> torch.Tensor:
        """The gradient target of a model without a classifier, on a normalised batch: (B,).

        ``norm``: L2 norm of the pooled embedding (ViT: the final CLS token after the last norm;
        CNN: the globally pooled features). ``cosine`` (ViTs): cosine similarity of the final
        CLS token to the mean final patch token.
        """
        raise NotImplementedError

    def forward_output(self, x: torch.Tensor) -> object:
        """The wrapped model's own output on a normalised batch (what a callable target receives)."""
        raise NotImplementedError

    def output_logits(self, out: object) -> torch.Tensor | None:
        """Class logits (B, C) from ``forward_output``'s result, or None for a model without a classifier."""
        return out if isinstance(out, torch.Tensor) and self.num_classes else None

    def layer_names(self) -> list[str]:
        """The module name (in the wrapped model) of each layer, by index: ``blocks.3``, ``layer4``."""
        return [str(i) for i in range(self.num_layers)]

    def _checked_classes(self, target: object, batch: int) -> torch.Tensor | None:
        """A class index, or one per image, as a (B,) long tensor; None for the predicted class."""
        if target is None:
            return None
        n = self.num_classes
        items = target.tolist() if isinstance(target, torch.Tensor) else target
        many = isinstance(items, (list, tuple))
        values = list(items) if many else [items]
        if many and len(values) != batch:
            raise ValueError(f"target: {len(values)} classes for {batch} images; give one class per image, one "
                             "class for all, or a callable")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"method.target_class={value!r}: expected a class index (int) >= 0 or null")
            if not n:
                raise ValueError(f"method.target_class={value}: model {self.name} has no classifier; leave it "
                                 "null (the target is then method.embedding_target) or give a callable")
            if not 0 <= value < n:
                raise ValueError(f"method.target_class={value} is out of range: model {self.name} has {n} classes, "
                                 f"valid 0..{n - 1} (or null for the predicted class)")
        return torch.tensor(values if many else values * batch, dtype=torch.long)

    def target_score(self, x: torch.Tensor, target_class: object = None,
                     embedding_target: str = "norm") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scalar per image that gradient methods explain, on a normalised batch.

        Args:
            x: normalised input, (B, 3, S, S).
            target_class: class index, one index per image (list or (B,) tensor), None for each
                image's predicted (top-1) class, or a callable taking the model's own output
                (``forward_output``) and returning a (B,) score, as pytorch-grad-cam's targets.
            embedding_target: without a classifier, ``norm`` or ``cosine`` (see ``embedding_score``).

        Returns:
            (score (B,) float32: the target class logit, or the embedding target; logits (B, C) or None).

        Raises:
            ValueError: a target class on a model without a classifier, or out of range; a callable
                whose result is not (B,).
        """
        if callable(target_class):
            out = self.forward_output(x)
            try:
                score = target_class(out)
            except (TypeError, AttributeError, IndexError, KeyError) as e:
                if isinstance(out, torch.Tensor):
                    raise
                hint = ("; its class logits are out.logits (target=lambda out: out.logits[:, k])"
                        if isinstance(getattr(out, "logits", None), torch.Tensor) else "")
                raise ValueError(f"target: the callable failed on the model's output, an object of type "
                                 f"{type(out).__name__}, not a tensor ({type(e).__name__}: {e}){hint}") from None
            if not isinstance(score, torch.Tensor) or tuple(score.shape) != (x.shape[0],):
                shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
                raise ValueError(f"target: the callable returned {shape}; expected a tensor of one score per image, "
                                 f"({x.shape[0]},)")
            if x.requires_grad and not score.requires_grad:
                raise ValueError("target: the callable's score does not depend on the model's output through autograd "
                                 "(detached: .detach(), .item(), NumPy or torch.no_grad() inside it); compute it from "
                                 "the output with torch operations, e.g. lambda out: out[:, 3]")
            return score.float(), self.output_logits(out)
        idx = self._checked_classes(target_class, x.shape[0])
        if not self.num_classes:
            return self.embedding_score(x, embedding_target).float(), None
        logits = self.logits(x)
        idx = logits.argmax(-1) if idx is None else idx.to(logits.device)
        return logits.float().gather(1, idx[:, None])[:, 0], logits  # the logit (pre-softmax), as in Grad-CAM

    def capture_grad(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, object]]:
        """Hooks that keep, per layer, the tensors of the autograd graph that gradients are taken against.

        ``features``: the layer's raw output (what flows on). ``qk`` (ViTs): q, k, v (detached,
        (B, H, N, D)) and the heads' merged attention output ``o`` (B, N, H D), in the graph.
        """
        raise NotImplementedError

    def grad_inputs(self, kept: object, what: str) -> torch.Tensor:
        """The tensor of one layer's ``capture_grad`` entry that gradients are taken against."""
        return kept["o"] if what == "qk" else kept

    def grad_captures(self, kept: object, grad: torch.Tensor, what: str) -> tuple[torch.Tensor, ...]:
        """One layer's kept tensors and gradient -> what a gradient method reads, detached.

        ``features``: (activation, gradient), each (B, C, h, w) on the layer's grid.
        ``qk``: (q, k, v) stacked (3, B, H, N, D) and the gradient of the attention output (B, H, N, D).
        """
        return kept.detach(), grad

    def _checked_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is a batch of RGB images (B, 3, H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")

    def model_dtype(self) -> torch.dtype:
        """The floating dtype of the wrapped model's parameters (float32 unless the user cast it: ``.half()``,
        ``.bfloat16()``, ``.double()``); the input is cast to it, the maps come back as float32."""
        model = getattr(self, "model", None)
        params = model.parameters() if isinstance(model, nn.Module) else iter(())
        return next((p.dtype for p in params if p.is_floating_point()), torch.float32)

    @staticmethod
    def _as_float32(value: object) -> object:
        """Captured tensors (or tuples of them) of a cast model as float32, as every map method expects."""
        if isinstance(value, torch.Tensor):
            return value.float() if value.is_floating_point() else value
        if isinstance(value, tuple):
            return tuple(Backbone._as_float32(v) for v in value)
        return value

    def extract_grad(self, x: torch.Tensor, layers: Sequence[int], method: object,
                     normalized: bool = False) -> tuple[dict[int, tuple], torch.Tensor | None]:
        """One forward pass with autograd and ONE backward for every requested layer.

        Runs with gradients enabled whatever the caller's mode (not under ``inference_mode``).
        Gradients are taken with ``torch.autograd.grad`` against the captured tensors only, so
        no parameter's ``.grad`` is touched; hooks are removed and the graph freed on return.

        Args:
            x: RGB in [0, 1], (B, 3, S, S).
            layers: non-negative layer indices.
            method: a map method with ``capture`` (``features`` or ``qk``), ``name``, and
                optionally ``target_class`` (see ``target_score``) and ``embedding_target``.
            normalized: ``x`` is already the model's input (normalised), not RGB in [0, 1].

        Returns:
            (captured, logits): ``captured[layer]`` as ``grad_captures`` gives it; logits (B, C)
            detached, or None without a classifier.

        Raises:
            RuntimeError: a requested layer produced nothing (the hook never fired).
        """
        what = method.capture
        self.check_capture(what, method.name)
        self._checked_input(x)
        hooks, store = self.capture_grad(layers, what)
        dtype = self.model_dtype()
        try:
            with torch.enable_grad():  # also under the caller's no_grad
                xn = (x.detach().clone() if normalized else self.normalize(x.detach())).to(dtype)
                xn.requires_grad_(True)  # a graph exists even with frozen parameters
                with forward_hooks(hooks):
                    score, logits = self.target_score(xn, getattr(method, "target_class", None),
                                                      getattr(method, "embedding_target", "norm"))
                missing = [layer for layer in layers if layer not in store]
                if missing:
                    raise RuntimeError(f"model {self.name}: layers {missing} were not captured during the forward pass")
                inputs = [self.grad_inputs(store[layer], what) for layer in layers]
                grads = torch.autograd.grad(score.sum(), inputs, allow_unused=True)  # images independent: one backward
            captured = {layer: self.grad_captures(store[layer], g if g is not None else torch.zeros_like(t), what)
                        for layer, t, g in zip(layers, inputs, grads)}
            if dtype != torch.float32:
                captured = {layer: self._as_float32(c) for layer, c in captured.items()}
        finally:
            store.clear()  # drop the graph's tensors even when the backward failed
        return captured, logits.detach() if logits is not None else None

    def capture(self, layers: Sequence[int], what: str) -> tuple[list[tuple[nn.Module, Hook]], dict[int, torch.Tensor]]:
        """Hooks that fill a dict ``layer -> (B, C_or_H, h, w)`` during one forward pass.

        For ``cls_attention``: the CLS row of each head over the patch tokens, (B, H, h, w).
        For ``features``: the layer's patch features on its grid, (B, C, h, w).
        """
        raise NotImplementedError

    def extra_hooks(self, layers: Sequence[int], extras: Sequence[str]
                    ) -> tuple[list[tuple[nn.Module, Hook]], dict[str, dict[int, torch.Tensor]]]:
        """Hooks that fill ``store[extra][layer]`` during a forward pass, beside the maps' own capture.

        Extras: ``rep_<kind>`` for each of ``representation_kinds`` (a pooled representation per
        image, (B, D)) and, for ViTs, ``attention_distance`` ((B, H), input pixels).

        Raises:
            ValueError: an extra this model cannot capture.
        """
        if extras:
            raise ValueError(f"model {self.name} ({self.kind}) cannot capture {', '.join(extras)}")
        return [], {}

    @contextmanager
    def capturing(self, layers: Sequence[int], extras: Sequence[str]) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
        """Capture ``extras`` of ``layers`` during every forward pass run inside the ``with`` block.

        The same pass as the maps (``extract`` or ``extract_grad`` inside the block): no extra
        forward. Yields ``store[extra][layer]`` (detached float32 tensors), filled as the pass runs;
        the hooks are removed on leaving the block.
        """
        hooks, store = self.extra_hooks(layers, extras)
        with forward_hooks(hooks):
            yield store

    def _load_checked(self, module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
        """Load ``sd`` into ``module``; a checkpoint for another architecture is a WeightsError naming keys."""
        from .weight_errors import WeightsError

        own = module.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise WeightsError(f"model {self.name}: checkpoint tensors of the wrong shape for {type(module).__name__}: "
                               f"{', '.join(wrong[:3])}{'...' if len(wrong) > 3 else ''}; is it another model size?")
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise WeightsError(f"model {self.name}: checkpoint does not fit {type(module).__name__}: "
                               f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                               f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")

    def check_capture(self, capture: str, method: str | None = None) -> None:
        """Raise ValueError naming the method and model when this model cannot capture ``capture``."""
        if capture not in self.captures:
            need = "attention (a ViT)" if capture in ("cls_attention", "qk") else capture
            raise ValueError(f"method={method or capture} does not apply to model {self.name} ({self.kind}): "
                             f"it needs {need}")

    @torch.no_grad()
    def extract(self, x: torch.Tensor, layers: Sequence[int], capture: str,
                normalized: bool = False) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Run one forward pass and capture every requested layer.

        Args:
            x: RGB in [0, 1], (B, 3, S, S) with S = ``img_size``.
            layers: non-negative layer indices (see ``select_indices``).
            capture: ``cls_attention`` (ViT) or ``features``.
            normalized: ``x`` is already the model's input (normalised), not RGB in [0, 1].

        Returns:
            (captured, logits): ``captured[layer]`` is (B, K, h, w) float32; logits (B, C) or None.

        Raises:
            RuntimeError: a requested layer produced nothing (the hook never fired).
        """
        self.check_capture(capture)
        self._checked_input(x)
        hooks, store = self.capture(layers, capture)
        dtype = self.model_dtype()
        with forward_hooks(hooks):
            logits = self.logits((x if normalized else self.normalize(x)).to(dtype))
        missing = [layer for layer in layers if layer not in store]
        if missing:
            raise RuntimeError(f"model {self.name}: layers {missing} were not captured during the forward pass")
        if dtype != torch.float32:
            return ({layer: self._as_float32(store[layer]) for layer in layers},
                    logits.float() if logits is not None else None)
        return {layer: store[layer] for layer in layers}, logits
