"""The method registry (``layerscope.methods.registry``): every method class has its YAML and every YAML its class,
named alike; each class agrees with its family's facts; the YAMLs restate no default; the registry loads
without torch; the README's methods table is the registry's."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

import layerscope.methods
from layerscope.config.method_options import OPTIONS, OPTIONS_GROUP, option_defaults
from layerscope.methods.registry import FAMILIES, HEADS, MethodInfo, methods, names
from layerscope.methods.base import MapMethod

from .conftest import CONF

ROOT = Path(__file__).resolve().parents[1]


def method_classes() -> dict[str, type]:
    """Every concrete ``MapMethod`` subclass with a name, found by walking ``layerscope.methods``."""
    found = {}
    for module in pkgutil.iter_modules(layerscope.methods.__path__):
        mod = importlib.import_module(f"layerscope.methods.{module.name}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, MapMethod) and cls.name and not inspect.isabstract(cls):
                found[cls.name] = cls
    return found


def test_every_method_class_has_its_yaml_and_every_yaml_its_class():
    assert list(FAMILIES) == list(OPTIONS) and all(FAMILIES[f].options is OPTIONS[f] for f in OPTIONS)
    registered = methods()
    yamls = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    assert sorted(registered) == yamls
    classes = method_classes()
    assert set(classes) <= set(registered), sorted(set(classes) - set(registered))
    for name, method in registered.items():
        target = get_object(method.target)
        if method.preset_of:  # a preset: the class of the method it sets options of
            assert method.preset_of in classes and target is classes[method.preset_of], name
        elif inspect.isclass(target):
            assert target.name == name, f"conf/method/{name}.yaml builds {target.__name__}, named {target.name!r}"
        else:  # auto: a function that picks a class by model
            assert callable(target) and name == "auto", name


@pytest.mark.parametrize("name", sorted(method_classes()))
def test_each_class_agrees_with_its_familys_facts(name):
    cls, method = method_classes()[name], methods()[name]
    facts = FAMILIES[method.family]
    assert cls.Options is facts.options
    assert (cls.needs_grad, cls.needs_references) == (facts.needs_grad, facts.needs_references)
    assert cls.head_mean == (facts.map_axis == HEADS)
    assert facts.vit_only == (cls.capture in ("cls_attention", "qk"))  # what Backbone.check_capture refuses on a CNN
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Options) if f.default is not dataclasses.MISSING}
    init = inspect.signature(cls.__init__).parameters
    assert not (set(init) & set(option_defaults(method.family))), "options are the family's, not the signature's"
    assert all(method.defaults[k] == v for k, v in defaults.items() if k != "seed")


def test_a_vit_only_method_is_refused_on_a_cnn_and_the_others_build():
    import layerscope as ls

    cnn = ls.load("tiny_cnn")
    for name, cls in method_classes().items():
        if methods()[name].vit_only:
            with pytest.raises(ValueError, match=f"method={name} does not apply to model tiny_cnn"):
                cls(cnn)
        else:
            assert cls(cnn).num_maps() >= 1


def test_the_yamls_restate_no_default():
    for name, method in methods().items():
        node = yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text())
        own = {k: v for k, v in node.items() if k not in ("defaults", "_target_")}
        base = methods()[method.preset_of].defaults if method.preset_of else option_defaults(method.family)
        restated = {k: v for k, v in own.items() if k in base and base[k] == v}
        assert not restated, f"conf/method/{name}.yaml restates {restated}"
        assert set(own) <= set(base), f"conf/method/{name}.yaml sets options its family lacks: {set(own) - set(base)}"


def test_a_yaml_that_names_no_family_is_one_clear_error(tmp_path):
    from layerscope.methods import registry

    bad = tmp_path / "mine.yaml"
    bad.write_text("defaults:\n  - nothing_here\n  - _self_\n_target_: x.Y\n")
    with pytest.raises(ValueError, match=rf"mine.yaml: defaults entry 'nothing_here': expected /{OPTIONS_GROUP}/"):
        registry._read(bad)


def test_presets_read_through_their_method():
    knn = methods()["patch_knn"]
    for preset in ("patchcore", "anomalydino"):
        info = methods()[preset]
        assert (info.preset_of, info.family, info.target) == ("patch_knn", "patch_knn", knn.target)
        assert info.defaults["smooth_sigma"] == 4 and info.defaults["bank_size"] is None
        assert info.defaults["k"] == knn.defaults["k"] == 1
    assert methods()["patchcore"].defaults["coreset"] == "greedy"
    assert methods()["anomalydino"].defaults["metric"] == "cosine"


def test_the_registry_and_the_axes_load_without_torch():
    code = ("import sys, layerscope.methods.registry as r, layerscope.results.axes as a, layerscope.methods as m; "
            "assert a.map_axis('cls_attention') == 'heads' and r.names(needs_grad=True); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def readme_methods_table() -> dict[str, list[str]]:
    """The README's "Map methods" table: ``method=`` -> its cells."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Map methods", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if line.startswith("|") else None
        if m:
            rows[m.group(1)] = cells[1:]
    return rows


def shown(value: object) -> str:
    """An option's value as the README writes it (YAML's spelling)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def describe(method: MethodInfo) -> list[str]:
    """The cells the README's table gives a method, from the registry: map axis, models, gradients, normal
    references, options with their defaults (a preset: what it changes)."""
    yes = {True: "yes", False: "no"}
    models = "ViT" if method.vit_only else "CNN, ViT"
    if method.preset_of:
        base = methods()[method.preset_of].defaults
        changed = [f"`{k}={shown(v)}`" for k, v in method.defaults.items() if base[k] != v]
        options = f"`{method.preset_of}`'s, with " + ", ".join(changed)
    else:
        options = ", ".join(f"`{k}={shown(v)}`" for k, v in method.defaults.items()) or "none"
    return [method.map_axis, models, yes[method.needs_grad], yes[method.needs_references], options]


def test_the_readme_methods_table_is_the_registry():
    table = readme_methods_table()
    assert sorted(table) == names()
    for name, method in methods().items():
        assert table[name][:5] == describe(method), name


def test_the_registry_reads_the_folder_the_configs_are_in():
    from layerscope.config.paths import config_dir
    from layerscope.methods import registry

    assert registry._method_dir() == Path(config_dir()) / "method"


def test_the_method_options_booleans_take_the_yaml_spellings():
    """``method.centred=yes`` reads as true, as every boolean option does, though no YAML holds the key."""
    from layerscope.config.checks import bool_options
    from layerscope.config.schema import bool_fields

    wanted = {f"method.{key}" for options in OPTIONS.values() for key in bool_fields(options)}
    assert {"method.centred", "method.mask_background"} <= wanted <= set(bool_options())
