"""The file weight source: safetensors, weights-only torch files, DINO-style containers, refused pickles."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from layerscope.backbones import TimmViT, WeightsError
from layerscope.backbones.weights import load_state_dict

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KW = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)


def tiny(img_size=64, **weights):
    return TimmViT("tiny", "vit_tiny_patch16_224", img_size=img_size, mean=MEAN, std=STD,
                   pretrained=bool(weights), weights=weights or None, model_kwargs=KW)


def attention(bb):
    torch.manual_seed(0)
    x = torch.rand(1, 3, bb.img_size, bb.img_size)
    return bb.extract(x, [0, 1], "cls_attention")[0]


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "dino_teacher"])
def test_file_source_round_trip(tmp_path, fmt):
    torch.manual_seed(1)
    source = tiny()
    sd = source.model.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    else:  # DINO's own checkpoints: {"teacher": {"backbone.xxx": ...}}
        path = tmp_path / "checkpoint.pth"
        torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": 100}, path)
    loaded = tiny(source="file", path=str(path))
    loaded.load_weights()
    for layer, maps in attention(loaded).items():
        torch.testing.assert_close(maps, attention(source)[layer])


def test_file_source_resamples_position_embedding_for_another_size(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(tiny(img_size=64).model.state_dict(), str(path))
    bigger = tiny(img_size=96, source="file", path=str(path))
    bigger.load_weights()
    assert bigger.model.pos_embed.shape == (1, 1 + 12 * 12, 32)
    assert attention(bigger)[1].shape == (1, 2, 12, 12)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(WeightsError, match=r"refused to load.*weights_only=True.*safetensors"):
        load_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out


def test_file_errors_name_the_path(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="expected .safetensors, .pth"):
        load_state_dict(tmp_path / "w.onnx")
    bad = tiny(source="file", path=str(tmp_path / "w.safetensors"))
    save_file({"unrelated": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match="does not fit"):
        bad.load_weights()
    with pytest.raises(WeightsError, match="needs model.weights.path"):
        tiny(source="file").load_weights()
    with pytest.raises(ValueError, match="model.weights.source='ftp'"):
        tiny(source="ftp")
