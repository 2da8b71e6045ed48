"""The map axis (heads or maps) of each map method: declared once (results/axes.py), true to what the
methods name their maps, and read by the page, the figures and the W&B logger instead of method names."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from layerscope.results.axes import HEADS, MAPS, axis_word, map_axis, map_label

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "layerscope"


def _methods() -> list[type]:
    from layerscope.methods import cam, methods

    found = {}
    for module in (methods, cam):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, methods.MapMethod) and cls.name:
                found[cls.name] = cls
    return list(found.values())


def test_the_declared_axis_matches_the_names_each_method_gives_its_maps():
    import layerscope as ls

    backbone = ls.load("tiny_vit")
    checked = []
    for cls in _methods():
        try:
            method = cls(backbone)
        except (ValueError, TypeError):  # a method that needs other options or another model
            continue
        names = method.map_names()
        numbered = len(names) == backbone.num_heads and names == [str(h) for h in range(backbone.num_heads)]
        assert (map_axis(cls.name) == HEADS) == numbered, (cls.name, names)
        checked.append(cls.name)
    assert {"cls_attention", "features", "rollout", "gradcam"} <= set(checked), checked


def test_words_and_labels_follow_the_axis():
    assert (map_axis("cls_attention"), axis_word("cls_attention"), map_label("cls_attention", 3)) == (HEADS, "head",
                                                                                                     "head 3")
    for method in ("rollout", "features", "gradcam", "some_new_method"):  # rollout's one map fuses the heads
        assert (map_axis(method), axis_word(method), map_label(method, "l2")) == (MAPS, "map", "l2")


@pytest.mark.parametrize("folder", ["view", "figures", "loggers", "analysis/saved.py"])
def test_readers_ask_the_axis_not_the_method_name(folder):
    path = PACKAGE / folder
    files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    compared = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](cls_attention|rollout)["']""")
    hits = [f"{f.name}:{i}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
            if compared.search(line)]
    assert not hits, hits
