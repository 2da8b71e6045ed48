"""layerscope from Python: load or wrap a model, get every layer's maps, score them against masks.

The same internals as a run (configs, backbones, map methods, the row builder ``scoring.image_rows``),
so the API and ``layerscope ...`` give identical maps and rows for the same model, images and options.

Example:
    >>> import layerscope as ls
    >>> bb = ls.load("tiny_vit")                                  # conf/model/tiny_vit.yaml, random init
    >>> import numpy as np
    >>> m = ls.maps(bb, [np.zeros((48, 64, 3), np.uint8)], layers=[-1])
    >>> m.names, m[1].shape                                        # 2 heads and their mean, 8x8 patches
    (['0', '1', 'mean'], (1, 3, 8, 8))
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .backbones import Backbone, select_indices

__all__ = ["Maps", "load", "maps", "score", "wrap"]

ImageLike = Any  # a path, a PIL image or an (H, W, 3) array (uint8, uint16, or floats in [0, 1])


def _compose(overrides: Sequence[str]):
    """The run's config with ``overrides`` (``model=...``, ``method=...``), names set from the choices."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import open_dict

    from .config.compose import name_from_choices
    from .config.paths import config_dir

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except MissingConfigException as e:
        wanted = str(e).splitlines()[0].split("Could not find '", 1)[-1].rstrip("'")
        group, _, value = wanted.rpartition("/")
        raise ValueError(f"{group}={value}: no such config; available: {', '.join(e.options or [])}") from None
    name_from_choices(cfg, cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _merged(base: dict, changes: Mapping[str, Any], what: str) -> dict:
    """``base`` with ``changes`` merged in (nested dicts key by key); an unknown key is a ValueError."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if key not in out:
            raise ValueError(f"{what}.{key}: no such option (options: {', '.join(k for k in out if k != '_target_')})")
        if isinstance(out[key], dict) and isinstance(value, Mapping) and key != "model_kwargs":
            out[key] = _merged(out[key], value, f"{what}.{key}")
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def load(name: str, *, seed: int = 0, device: str | torch.device | None = None, **overrides: Any) -> Backbone:
    """A model by config name (``conf/model/<name>.yaml``), weights loaded, in eval mode.

    Args:
        name: ``"dinov2_vits14_bundled"``, ``"dino_vits8"``, ``"timm"`` (with ``arch=``), ``"hf"``
            (with ``hub_id=``), ...
        seed: seeds a random-init model's weights as a run with ``seed=`` does (the caller's RNG
            state is left as it was).
        device: where to put it (``"cuda"``, ``"cuda:1"``, ``"mps"``); None leaves it on the CPU. A device
            this machine does not have is a ValueError before anything is built.
        **overrides: ``model.*`` options as keywords: ``img_size=224``, ``pretrained=False``,
            ``weights={"source": "file", "path": "ckpt.pth"}``, ``arch="resnet18"``.

    Returns:
        The backbone: ``num_layers``, ``layer_names()``, ``img_size``, ``labels``, ...

    Raises:
        ValueError: an unknown config or option, a value the model does not take, a device this machine
            lacks, or ``weights=`` naming a file with ``pretrained=False`` (it would be ignored) (one line).
        WeightsError: weights that cannot be found or read (the message says what to do).

    Example:
        >>> import layerscope as ls
        >>> bb = ls.load("tiny_cnn", img_size=96)
        >>> bb.kind, bb.num_layers, bb.img_size
        ('cnn', 5, 96)
    """
    from omegaconf import OmegaConf

    from .plan import build

    device = _device(device)
    cfg = _compose([f"model={name}"])
    model_cfg = _merged(OmegaConf.to_container(cfg.model, resolve=True), overrides, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # as a run: seed, then build (random-init weights match the run's)
        backbone: Backbone = build(OmegaConf.create(model_cfg))
    backbone.load_weights()
    backbone.eval()
    backbone.config = model_cfg
    return backbone.to(device) if device is not None else backbone


def _device(device: Any) -> torch.device | None:
    """``device=`` as a torch device that exists on this machine (None stays None).

    Raises:
        ValueError: one line: not a device name, or a CUDA/MPS device this machine does not have.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r}: not a torch device; expected 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"device={device!r}: {'no CUDA device is' if not seen else f'only {seen} CUDA device(s) are'} "
                         "visible on this machine; use device='cpu' (or leave it unset)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r}: no MPS device is available on this machine; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: layerscope runs on 'cpu', 'cuda' or 'mps', not {dev.type}")
    return dev


def wrap(model: nn.Module, *, layers: Sequence[str] | str | None = None, img_size: int | None = None,
         mean: Sequence[float] | None = None, std: Sequence[float] | None = None, name: str | None = None,
         num_prefix: int | None = None) -> Backbone:
    """An existing model object as a layerscope backbone, its weights as they are (put in eval mode).

    - a timm ``VisionTransformer``: every block is a layer; all methods (attention, features, CAMs);
    - a timm CNN: the stages of its ``feature_info`` are the layers;
    - a transformers vision model with standard q/k self-attention (``ViTModel``,
      ``ViTForImageClassification``, ``Dinov2Model``, ``Dinov2WithRegistersModel``, ``DeiTModel``, ...):
      every layer of its encoder, all methods;
    - any ``nn.Module`` with ``layers=`` module names (``["layer3", "layer4"]``, ``["blocks.11.norm1"]``):
      their outputs, feature maps ``(B, C, h, w)`` or tokens ``(B, N, C)``, serve ``features`` and the CAM
      methods (attention methods say they cannot read it). ``layers=`` also works on the models above.

    Args:
        model: the model.
        layers: module names to use as layers (required for a model of none of the kinds above).
        img_size: input side; default: timm's ``pretrained_cfg``, a transformers image processor
            config on this machine, else the config's ``image_size``; 224 for other modules.
        mean, std: RGB normalisation; default from the same configs, else ImageNet's.
        name: the model's name in results (default: its architecture or class).
        num_prefix: leading non-patch tokens of token outputs with ``layers=`` (default: inferred).

    Raises:
        ValueError: one line: a model layerscope cannot read without ``layers`` (a timm ``features_only``
            model, a timm transformer that is not a ``VisionTransformer`` such as EVA-02 or BEiT), an unknown
            module name (the closest names are listed), a layer output that is not a map, an ``img_size``
            that is not a positive int, a ``std`` with a value <= 0.

    Example:
        >>> import torch, torchvision, layerscope as ls
        >>> bb = ls.wrap(torchvision.models.resnet18(), layers=["layer3", "layer4"])
        >>> bb.layer_names(), bb.num_classes
        (['layer3', 'layer4'], 1000)
    """
    from .backbones.adopt import wrap_model

    return wrap_model(model, layers, img_size, mean, std, name, num_prefix)


def _resolve_layers(backbone: Backbone, layers: Any) -> list[int]:
    """``"all"``, an int or module name, or a list of them -> sorted layer indices."""
    if isinstance(layers, str) and layers == "all" or layers is None:
        return list(range(backbone.num_layers))
    if isinstance(layers, (np.ndarray, torch.Tensor)):
        layers = layers.tolist()  # a 0-d array gives its number, a 1-d one a list
    items = list(layers) if isinstance(layers, (list, tuple, range)) else [layers]
    names = backbone.layer_names()
    out = []
    for item in items:
        item = _as_int(item)
        if isinstance(item, str):
            if item not in names:
                shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
                raise ValueError(f"layers={item!r}: not a layer of model {backbone.name}; its layers are {shown} "
                                 "(or ints, negative from the end; wrap(model, layers=[...]) takes any module)")
            out.append(names.index(item))
        elif isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"layers={item!r}: expected an int (negative from the end), a module name, 'all', or a "
                             "list of them")
        else:
            out.append(item)
    return select_indices(out, backbone.num_layers, "layer")


def _as_int(value: Any) -> Any:
    """A NumPy or 0-d torch integer as a Python int (layers, targets); anything else as it is."""
    if isinstance(value, np.integer) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and not value.is_complex() and value.dtype != torch.bool:
        return int(value)
    return value


def _as_rgb(item: ImageLike, i: int) -> tuple[np.ndarray, str]:
    """One image as (H, W, 3) uint8 and its id (the file stem for a path, else its index)."""
    from PIL import Image

    from .data.images import array_to_rgb, pil_to_rgb, read_image

    if isinstance(item, (str, Path)):
        rgb, image_id = read_image(Path(item)), Path(item).stem
    elif isinstance(item, Image.Image):
        rgb, image_id = pil_to_rgb(item), str(i)  # the files' rule: 16-bit scaled, not clipped
    elif isinstance(item, (np.ndarray, torch.Tensor, list, tuple)):
        arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        rgb, image_id = array_to_rgb(arr, f"images[{i}]"), str(i)
    else:
        raise ValueError(f"images[{i}]: expected a path, a PIL image or an (H, W, 3) array, got {type(item).__name__}")
    if not rgb.shape[0] or not rgb.shape[1]:
        raise ValueError(f"images[{i}]: an empty image ({rgb.shape[1]}x{rgb.shape[0]} pixels)")
    return rgb, image_id


def _inputs(backbone: Backbone, images: Any) -> tuple[torch.Tensor, torch.Tensor, list[str], list[tuple[int, int]]]:
    """(RGB in [0, 1] (B, 3, S, S), the model's normalised input, ids, each image's (H, W) as given) from any
    accepted images."""
    from .data.base import Sample
    from .data.transforms import to_input

    size = backbone.img_size
    if isinstance(images, torch.Tensor):  # already the model's input
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images: a tensor is taken as the model's preprocessed input and must be (B, 3, {size}, "
                             f"{size}), got {tuple(images.shape)}; pass images (paths, PIL, uint8 arrays) to have "
                             "them resized and normalised")
        if not images.is_floating_point():
            raise ValueError(f"images: a tensor is taken as the model's preprocessed (normalised, float) input, got "
                             f"{images.dtype}; pass uint8 images as (H, W, 3) NumPy arrays or PIL images to have them "
                             "resized and normalised")
        if not len(images):
            raise ValueError("images: an empty batch (a tensor of 0 images)")
        xn = images.detach().float().cpu()
        if not torch.isfinite(xn).all():
            raise ValueError("images: the tensor has NaN/inf values")
        rgb = (xn * backbone.std.float().cpu() + backbone.mean.float().cpu()).clamp(0, 1)
        return rgb, xn, [str(i) for i in range(len(xn))], [(size, size)] * len(xn)
    if isinstance(images, (str, Path, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    elif not isinstance(images, (list, tuple, np.ndarray)):
        from PIL import Image

        images = [images] if isinstance(images, Image.Image) else list(images)
    if not len(images):
        raise ValueError("images: none given")
    xs, ids, sizes = [], [], []
    for i, item in enumerate(images):
        rgb, image_id = _as_rgb(item, i)
        xs.append(to_input(Sample(id=image_id, image=rgb), size)[0])  # the run's resize: whole image, bicubic
        ids.append(image_id)
        sizes.append(tuple(rgb.shape[:2]))
    rgb = torch.stack(xs)
    return rgb, (rgb - backbone.mean.float().cpu()) / backbone.std.float().cpu(), ids, sizes


class Maps:
    """Every requested layer's maps of a batch of images, as ``layerscope.maps`` returns them.

    Attributes:
        layers: layer indices, in order.
        layer_names: the module name of each layer.
        names: the K map names of every layer (heads then ``"mean"``, or ``"l2"``, ``"gradcam"``, ...).
        images: (B, S, S, 3) uint8, the model's input before normalisation.
        ids: one id per image (file stems for paths).
        sizes: each image's (H, W) as given (before resizing to S): the frame its mask is in.
        logits: (B, C) float32, or None without a classifier.
        method: the method's name; model: the backbone's name.

    ``maps[layer]`` (an index, negative from the end, or a module name) is a (B, K, h, w) float32 array.
    """

    def __init__(self, arrays: dict[int, np.ndarray], names: list[str], backbone: Backbone, method: Any,
                 rgb: torch.Tensor, ids: list[str], logits: np.ndarray | None,
                 sizes: list[tuple[int, int]] | None = None):
        self._arrays = arrays
        self.layers = list(arrays)
        all_names = backbone.layer_names()
        self.layer_names = [all_names[layer] for layer in self.layers]
        self.names = list(names)
        self.backbone, self._method, self._rgb = backbone, method, rgb
        self.method, self.model = method.name, backbone.name
        self.images = (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        self.ids, self.logits = list(ids), logits
        side = self.images.shape[1]
        self.sizes = [tuple(hw) for hw in sizes] if sizes is not None else [(side, side)] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, layer: int | str) -> np.ndarray:
        layer = _as_int(layer)
        if isinstance(layer, str) and layer in self.layer_names:
            layer = self.layers[self.layer_names.index(layer)]
        elif isinstance(layer, int) and layer < 0:
            layer %= self.backbone.num_layers  # negative from the end of the model, as in maps(layers=...)
        if layer not in self._arrays:
            raise KeyError(f"layer {layer!r} is not among these maps' layers {self.layers} ({self.layer_names})")
        return self._arrays[layer]

    def __repr__(self) -> str:
        shapes = {layer: tuple(a.shape[-2:]) for layer, a in self._arrays.items()}
        return (f"Maps({self.model}, {self.method}, {len(self)} images, names {self.names}, "
                f"layer grids {shapes})")

    @property
    def predictions(self) -> list[str | None]:
        """Each image's top-1 label (None without a classifier or without label names)."""
        labels = self.backbone.labels
        if self.logits is None or not labels:
            return [None] * len(self)
        return [labels[int(c)] for c in self.logits.argmax(-1)]

    def upsample(self, size: int | tuple[int, int] | None = None, mode: str = "bilinear") -> "Maps":
        """The same maps resized to ``size`` (default: the input's side), ``bilinear`` or ``nearest``.

        Returns:
            A new ``Maps`` whose arrays are (B, K, H, W).
        """
        from .methods.upsample import upsample

        side = _as_int(size) if size is not None else self.images.shape[1]
        hw = (side, side) if isinstance(side, int) else tuple(_as_int(v) for v in side) \
            if isinstance(side, (tuple, list)) else ()
        if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
            raise ValueError(f"upsample: size={size!r}: expected a side in pixels >= 1, or (h, w)")
        out = copy.copy(self)
        out._arrays = {layer: upsample(torch.from_numpy(a), hw, mode).numpy() for layer, a in self._arrays.items()}
        return out

    def overlay(self, i: int, layer: int | str, k: int | str = -1, alpha: float = 0.5):
        """Image ``i`` with map ``k`` of ``layer`` on top (inferno colours, min-max scaled, bilinear).

        Args:
            i: image index.
            layer: layer index or module name.
            k: map index or name (default the last: the head mean of attention maps).
            alpha: opacity of the map.

        Returns:
            A PIL RGB image of the input's size.
        """
        from PIL import Image

        from .figures.grid import colormap
        from .methods.upsample import upsample

        i, k = _as_int(i), _as_int(k)
        if isinstance(i, bool) or not isinstance(i, int) or not -len(self) <= i < len(self):
            raise ValueError(f"overlay: i={i!r}: expected an image index in 0..{len(self) - 1}")
        if isinstance(k, str):
            if k not in self.names:
                raise ValueError(f"overlay: k={k!r} is not a map of these maps; their names: {', '.join(self.names)}")
            k = self.names.index(k)
        elif isinstance(k, bool) or not isinstance(k, int) or not -len(self.names) <= k < len(self.names):
            raise ValueError(f"overlay: k={k!r}: expected a map index in {-len(self.names)}..{len(self.names) - 1} "
                             f"or a name ({', '.join(self.names)})")
        image = self.images[i]
        m = upsample(torch.from_numpy(self[layer][i, k]), image.shape[:2], "bilinear").numpy()
        low, high = float(m.min()), float(m.max())
        scaled = (m - low) / (high - low) if high > low else np.zeros_like(m)
        colours = colormap()[np.clip((scaled * 256).astype(np.int64), 0, 255)]
        return Image.fromarray((image * (1 - alpha) + colours * alpha).round().astype(np.uint8))


def _method(backbone: Backbone, method: Any, target: Any, options: Mapping[str, Any]) -> Any:
    """The map method: a config name (``conf/method/<name>.yaml``) with ``options``, or a MapMethod as it is."""
    from omegaconf import OmegaConf

    from .methods.methods import MapMethod
    from .plan import build

    if isinstance(method, MapMethod):
        if options:
            raise ValueError(f"options {sorted(options)} apply to a method given by name, not to a built one")
    else:
        cfg = _compose([f"method={method}"])
        method_cfg = _merged(OmegaConf.to_container(cfg.method, resolve=True), options, "method")
        method = build(OmegaConf.create(method_cfg), backbone=backbone)
    if target is not None:
        if not method.needs_grad:
            raise ValueError(f"target= applies to gradient methods (gradcam, gradcam_pp, hirescam, xgradcam, layercam, "
                             f"attn_grad), not to method={method.name}")
        if isinstance(target, (torch.Tensor, np.ndarray)):
            target = target.tolist()  # a 0-d one gives its number
        target = [_as_int(t) for t in target] if isinstance(target, (list, tuple)) else _as_int(target)
        if isinstance(target, (list, tuple, int)):
            from .methods.cam import check_target

            check_target(backbone, target, method.embedding_target)
        elif not callable(target):
            raise ValueError(f"target={target!r}: expected a class index, one per image, or a callable on the "
                             "model's output returning a (B,) score")
        method.target_class = target
    return method


def maps(backbone: Backbone | nn.Module, images: Any, layers: Any = "all", method: Any = "cls_attention",
         target: int | Sequence[int] | Callable[[Any], torch.Tensor] | None = None, *, batch_size: int = 8,
         references: Any = None, **options: Any) -> Maps:
    """Every requested layer's maps of ``images``, one forward pass (and one backward for gradient methods) per batch.

    The model runs in eval mode (no dropout; BatchNorm uses its running statistics and changes no buffer),
    and every module's own train/eval mode is put back afterwards. A model cast to another dtype
    (``.half()``, ``.bfloat16()``, ``.double()``) gets its input in that dtype; the maps are float32.

    Args:
        backbone: from ``load`` or ``wrap`` (a plain ``nn.Module`` is wrapped first).
        images: paths, PIL images, (H, W), (H, W, 3) or (H, W, 4) arrays, uint8, uint16 (divided by
            65535, as a 16-bit file or PIL image is) or floats in [0, 1] (resized to the model's side as a
            run does), or a float tensor (B, 3, S, S) taken as the model's already preprocessed input.
        layers: ``"all"``, an int (negative from the end), a module name, or a list of them.
        method: a method config name: ``cls_attention``, ``features``, ``rollout``, ``gradcam``,
            ``gradcam_pp``, ``hirescam``, ``xgradcam``, ``layercam``, ``eigencam``, ``attn_grad``,
            ``patch_knn`` (with ``references=``), ``auto``; or a built ``MapMethod``.
        target: gradient methods: a class index (NumPy and torch integers too), one per image, or a
            callable on the model's own output returning a (B,) score computed with torch operations
            (``lambda out: out[:, 3]``, pytorch-grad-cam's pattern; a transformers model's output is its
            ``ModelOutput``: ``lambda out: out.logits[:, 3]``); None explains each image's predicted class
            (or the embedding norm without a classifier). Not under ``torch.inference_mode()``.
        batch_size: images per forward pass.
        references: normal images for ``patch_knn``'s memory bank (same kinds as ``images``).
        **options: the method's options (``reductions=["l2"]``, ``centred=True``, ``head_fusion="max"``).

    Returns:
        ``Maps``: per layer (B, K, h, w) float32; for attention the heads and their mean, as a run saves them.

    Raises:
        ValueError: one line naming the option, layer, image or target that does not fit (also: a method
            that reads the CLS token on a ViT without one; a gradient method under ``torch.inference_mode()``;
            a callable target whose score is detached).

    Example:
        >>> import torch, torchvision, layerscope as ls
        >>> bb = ls.wrap(torchvision.models.resnet18(), layers=["layer4"])
        >>> m = ls.maps(bb, torch.randn(2, 3, 224, 224), method="gradcam", target=lambda out: out[:, 281])
        >>> m["layer4"].shape
        (2, 1, 7, 7)
    """
    if not isinstance(backbone, Backbone):
        backbone = wrap(backbone)
    batch_size = _as_int(batch_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
    method = _method(backbone, method, target, options)
    if method.needs_grad and torch.is_inference_mode_enabled():
        raise ValueError(f"method={method.name} needs gradients, which torch.inference_mode() forbids: call "
                         "layerscope.maps outside that block (under torch.no_grad() it works)")
    picked = _resolve_layers(backbone, layers)
    rgb, xn, ids, sizes = _inputs(backbone, images)
    with _eval_mode(backbone):
        arrays, logits = _compute(backbone, method, picked, xn, batch_size, references)
    names = method.map_names() + (["mean"] if method.head_mean else [])
    return Maps(arrays, names, backbone, method, rgb, ids, logits, sizes)


@contextlib.contextmanager
def _eval_mode(backbone: Backbone) -> Iterator[None]:
    """The backbone in eval mode (no dropout; BatchNorm reads its running statistics and updates none of its
    buffers) for the ``with`` block; every submodule's own mode is put back after, also after an exception."""
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _compute(backbone: Backbone, method: Any, picked: list[int], xn: torch.Tensor, batch_size: int,
             references: Any) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """Every picked layer's maps of the normalised batch ``xn`` (B, 3, S, S), and the logits (B, C) or None."""
    from .plan import Plan, chosen_maps

    device = backbone.mean.device
    capture = method.capture_layers(picked)
    if any(method.extra_map_names(layer) for layer in picked):
        raise ValueError(f"method={method.name} with fused layers (method.fuse) runs in studies (layerscope), "
                         "not in layerscope.maps: leave fuse out here")
    if method.needs_references:
        if references is None:
            raise ValueError(f"method={method.name} learns from defect-free images: give references=[...]")
        ref = _inputs(backbone, references)[1]
        batches = (ref[i:i + batch_size].to(device) for i in range(0, len(ref), batch_size))
        method.fit(batches, picked, lambda x: backbone.extract(x, picked, method.capture, normalized=True))
    plan = Plan(method, picked, list(range(method.num_maps())), None)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in picked}
    logits_parts = []
    for start in range(0, len(xn), batch_size):
        x = xn[start:start + batch_size].to(device)
        if method.needs_grad:
            captured, logits = backbone.extract_grad(x, capture, method, normalized=True)
        else:
            captured, logits = backbone.extract(x, capture, method.capture, normalized=True)
        out = method.maps(captured)
        del captured
        chosen = chosen_maps(plan, {layer: out[layer].float().cpu() for layer in picked})
        for layer in picked:
            parts[layer].append(chosen[layer])
        if logits is not None:
            logits_parts.append(logits.float().cpu())
    arrays = {layer: torch.cat(parts[layer]).numpy() for layer in picked}
    return arrays, torch.cat(logits_parts).numpy() if logits_parts else None


SCORE_KEYS = ("threshold_rule", "upsample", "seed")


def _mask(mask: Any, image_hw: tuple[int, int], size: int, i: int) -> torch.Tensor | None:
    """One mask (path, PIL, array) in its image's frame -> (S, S) bool, read and resized as a run does
    (``data.images.as_mask``; ``data.transforms.resize_mask``: a cell is defect where any of its pixels is).

    Raises:
        ValueError: not a mask, or a mask of another size than its image (one line naming ``masks[i]``).
    """
    from .data.images import BadImage, as_mask
    from .data.transforms import resize_mask

    if mask is None:
        return None
    try:
        arr = as_mask(mask, f"masks[{i}]")
    except BadImage as e:
        raise ValueError(f"masks[{i}]: {e}") from None
    if tuple(arr.shape) != tuple(image_hw):
        (mh, mw), (ih, iw) = arr.shape, image_hw
        raise ValueError(f"masks[{i}]: mask is {mw}x{mh}, image {i} is {iw}x{ih}; expected the same size (a mask in "
                         "its image's frame, as given to layerscope.maps)")
    return resize_mask(arr, size)


def score(maps: Maps, masks: Any = None, threshold: float | Sequence[float] = 0.6, **metric_options: Any):
    """The ``results.csv`` rows of ``maps`` against ``masks``, from the run's own row builder.

    Args:
        maps: from ``layerscope.maps``.
        masks: one per image (a path, a PIL image, an (H, W) array of the image's own size as given to
            ``maps``, or None), or None for the threshold-free columns only. Read and resized as a run
            does (``data.images.as_mask``, ``data.transforms.resize_mask``: a cell of a coarser grid is defect
            where any of its pixels is), so the rows equal the run's.
        threshold: keep-mass fraction(s) (or min-max levels with ``threshold_rule="minmax"``).
        **metric_options: ``threshold_rule``, ``upsample``, and any ``metrics.*`` option of
            the schema (``options.MetricsOptions``: ``aupro_fpr_limit``, ``pointing_tolerance``, ``faithfulness=True``,
            ``faithfulness_steps``, ``faithfulness_baseline``, ``faithfulness_tie_orders``), ``seed``.

    Returns:
        A pandas DataFrame with the columns of ``results.csv``, one row per (image, layer, map,
        threshold), plus a ``best`` row per threshold where maps are heads with their mean.

    Raises:
        ValueError: an unknown option, or masks that do not match the images: another count, another size
            than their image, not a mask ((H, W, 5), NaN values, complex).

    Example:
        >>> import numpy as np, layerscope as ls
        >>> m = ls.maps(ls.load("tiny_cnn"), [np.zeros((64, 64, 3), np.uint8)], method="features")
        >>> mask = np.zeros((64, 64), bool); mask[8:24, 8:24] = True
        >>> df = ls.score(m, [mask])
        >>> sorted(df["head"].unique())
        ['l2', 'mean_abs', 'pca']
    """
    import dataclasses

    import pandas as pd

    from .config.schema import MetricsOptions, StudyConfig, typed
    from .results.table import COLUMNS
    from .scoring import ScoreOptions, Target, image_rows, one_thread

    metric_keys = tuple(f.name for f in dataclasses.fields(MetricsOptions))
    given: dict[str, Any] = {"threshold": list(threshold) if isinstance(threshold, (list, tuple)) else threshold,
                             "metrics": {}}
    for key, value in metric_options.items():
        if key in SCORE_KEYS:
            given[key] = value
        elif key in metric_keys:
            given["metrics"][key] = value
        else:
            raise ValueError(f"{key}: not a scoring option (options: {', '.join(SCORE_KEYS + metric_keys)})")
    opts: StudyConfig = typed(StudyConfig, given)  # the schema's defaults for the rest, types checked
    scoring = ScoreOptions.of(opts.threshold, opts.threshold_rule, opts.upsample, opts.metrics)
    n, bb = len(maps), maps.backbone
    mask_list = [None] * n if masks is None else [masks] if n == 1 and not isinstance(masks, (list, tuple)) else \
        list(masks)
    if len(mask_list) != n:
        raise ValueError(f"masks: {len(mask_list)} masks for {n} images; give one per image (None where there is none)")
    size = maps.images.shape[1]
    targets = [_mask(m, maps.sizes[i], size, i) for i, m in enumerate(mask_list)]
    if opts.metrics.faithfulness:
        with _eval_mode(bb):
            extra = _faithfulness(maps, opts.metrics, opts.seed)
    else:
        extra = [None] * n
    rows = []
    with one_thread():
        for i in range(n):
            target = Target(targets[i]) if targets[i] is not None else None
            meta = {"image": maps.ids[i], "group": maps.ids[i], "category": "", "dataset": "", "source": "",
                    "model": bb.name, "kind": bb.kind, "num_layers": bb.num_layers, "img_size": bb.img_size,
                    "method": maps.method, "mask_fraction": target.fraction if target is not None else None}
            if maps.logits is not None and bb.labels:
                p, c = torch.from_numpy(maps.logits[i]).softmax(-1).max(-1)
                meta.update(pred_label=bb.labels[int(c)], pred_prob=float(p))
            image_maps = {layer: torch.from_numpy(maps[layer][i]) for layer in maps.layers}
            names = {layer: maps.names for layer in maps.layers}
            rows += image_rows(meta, image_maps, names, target, scoring, extra[i])
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _faithfulness(maps: Maps, metrics: Any, seed: int) -> list[dict]:
    """Deletion and insertion AUC of every map, per image (``metrics.faithfulness=True``; ``metrics``: the
    ``options.MetricsOptions``)."""
    from .mapsource import faithfulness

    bb = maps.backbone
    target = getattr(maps._method, "target_class", None)
    if isinstance(target, int) or isinstance(target, (list, tuple)):
        classes = torch.as_tensor([target] * len(maps) if isinstance(target, int) else list(target))
    elif maps.logits is not None:
        classes = torch.from_numpy(maps.logits).argmax(-1)  # a callable target: the predicted class's probability
    else:
        classes = torch.zeros(len(maps), dtype=torch.long)  # faithfulness() stops with its one line
    arrays = {layer: torch.from_numpy(maps[layer]) for layer in maps.layers}
    values = faithfulness(bb, maps._rgb, arrays, classes, metrics.faithfulness_steps, metrics.faithfulness_baseline,
                          tie_orders=metrics.faithfulness_tie_orders, seed=seed)
    return [{layer: {"deletion_auc": v[i, :, 0], "insertion_auc": v[i, :, 1]} for layer, v in values.items()}
            for i in range(len(maps))]
