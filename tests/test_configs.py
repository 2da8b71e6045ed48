"""Every config composes; every model config instantiates; options are checked before loading."""
from __future__ import annotations

import time

import pytest
from hydra.utils import instantiate

from layerscope.backbones import Backbone, WeightsError
from layerscope.plan import build_dataset, plan_study

from .conftest import CONF, compose

GENERIC = ("timm", "hf")  # any timm / transformers model by name: model.arch / model.hub_id required (tests/test_api.py)
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in GENERIC)
BUNDLED = [m for m in MODELS if m.endswith("_bundled")]


def test_model_list_is_the_documented_one():
    expected = {"dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16", "vit_b16", "dinov2_vits14",
                "dinov2_vits14_reg", "resnet50", "dinov2_vits14_bundled", "efficientnet_lite0_bundled"}
    assert expected <= set(MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_model_instantiates(name):
    cfg = compose(f"model={name}")
    bb = instantiate(cfg.model, _convert_="all")
    assert isinstance(bb, Backbone) and bb.name == name and bb.num_layers > 0
    plan = plan_study(cfg, bb)
    assert plan.layers == list(range(bb.num_layers))
    if name in BUNDLED:
        bb.load_weights()  # bundled weights are local: load them for real


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in MODELS if m not in BUNDLED and not m.startswith("tiny")])
def test_hub_models_offline_fail_fast_naming_the_ways_out(name):
    bb = instantiate(compose(f"model={name}").model, _convert_="all")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="model.pretrained=false") as err:
        bb.load_weights()
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    for way in ("hub", "model.weights.source=file", "model=dinov2_vits14_bundled", "model.pretrained=false"):
        assert way in msg


def test_every_data_option_composes():
    for path in sorted((CONF / "data").glob("*.yaml")):
        assert compose(f"data={path.stem}").data.name == path.stem


def test_every_logger_instantiates_without_contacting_anything():
    from layerscope.loggers import Logger

    for path in sorted((CONF / "logger").glob("*.yaml")):
        assert isinstance(instantiate(compose(f"logger={path.stem}").logger), Logger)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "method").glob("*.yaml")))
def test_every_method_instantiates_on_a_vit_and_says_if_it_fits_a_cnn(name):
    from layerscope.methods.registry import info
    from layerscope.methods.base import MapMethod

    for model in ("tiny_vit", "tiny_cnn"):
        cfg = compose(f"model={model}", f"method={name}")
        bb = instantiate(cfg.model, _convert_="all")
        if info(name).vit_only and model == "tiny_cnn":
            with pytest.raises(ValueError, match="does not apply to model tiny_cnn"):
                plan_study(cfg, bb)
            continue
        method = plan_study(cfg, bb).method
        assert isinstance(method, MapMethod) and method.num_maps() >= 1


def test_builtin_datasets_build():
    assert len(build_dataset(compose())) == 16
    assert len(build_dataset(compose("data=samples"))) == 5


@pytest.mark.parametrize("overrides,message", [
    (["layer=2"], r"layer=2 is out of range: this model has 2 layers, valid -2..1"),
    (["head=[0,5]"], r"head=5 is out of range: this model has 2 heads"),
    (["threshold=[0.5,1.5]"], r"threshold=\[1.5\]"),
    (["threshold_rule=otsu"], "threshold_rule=otsu"),
    (["upsample=cubic"], "upsample=cubic"),
    (["method=features", "method.reductions=[max]"], "method.reductions"),
    (["method=patch_knn", "method.k=0"], "method.k=0"),
    (["metrics.aupro_fpr_limit=0"], "metrics.aupro_fpr_limit=0"),
])
def test_bad_options_are_rejected_before_loading(overrides, message):
    cfg = compose("model=tiny_vit", *overrides)
    bb = instantiate(cfg.model, _convert_="all")
    with pytest.raises(ValueError, match=message):
        plan_study(cfg, bb)


def test_cls_attention_on_a_cnn_is_rejected():
    cfg = compose("model=tiny_cnn", "method=cls_attention")
    with pytest.raises(ValueError, match="method=cls_attention does not apply to model tiny_cnn"):
        plan_study(cfg, instantiate(cfg.model, _convert_="all"))


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_its_models_exist(name):
    cfg = compose(f"experiment={name}")
    assert cfg.model.name in MODELS
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    for line in text.splitlines():  # models named in the sweep exist as configs
        if line.strip().startswith("model:") and "," in line:
            assert set(line.split(":", 1)[1].strip().split(",")) <= set(MODELS), line
