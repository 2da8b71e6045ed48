"""The public API's types, as an editor and mypy see them through ``import layerscope as ls``: real
signatures (not ``Any`` from the lazy ``__getattr__``), and ``layerscope.api`` fully annotated and clean.
Skips where mypy is not installed (the ``test`` extra has it)."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# torch and the other heavy libraries are read as Any (their own types are not under test, and analysing
# them takes minutes); numpy, pandas and PIL keep theirs.
CONFIG = """\
[mypy]
follow_imports = silent
ignore_missing_imports = True
[mypy-layerscope.api.*]
disallow_untyped_defs = True
disallow_incomplete_defs = True
[mypy-torch.*,torchvision.*,timm.*,transformers.*,scipy.*,sklearn.*,matplotlib.*,hydra.*,omegaconf.*,skimage.*]
follow_imports = skip
"""

USES = """\
import numpy as np
import pandas as pd
from PIL import Image
from typing_extensions import assert_type, reveal_type

import layerscope as ls
from layerscope.api import Maps
from layerscope.backbones import Backbone

bb = ls.load("tiny_vit", img_size=32)
assert_type(bb, Backbone)
m = ls.maps(bb, [np.zeros((8, 8, 3), np.uint8)], layers=[-1], method="features", batch_size=2)
assert_type(m, Maps)
assert_type(len(m), int)
for layer in m:
    assert_type(layer, int)
assert_type(m[0], np.ndarray)
assert_type(m["blocks.1"], np.ndarray)
assert_type(m.image(0), Maps)
assert_type(m.num_images, int)
assert_type(m.to_dataframe(), pd.DataFrame)
assert_type(m.overlay(0, layer=-1), Image.Image)
assert_type(ls.score(m, [None], threshold=[0.5, 0.7]), pd.DataFrame)
reveal_type(ls.maps)
"""

MISUSES = """\
import numpy as np

import layerscope as ls

bb = ls.load("tiny_vit")
m = ls.maps(bb, [np.zeros((8, 8, 3), np.uint8)], batch_size="2")
m.image("first")
ls.score(m, threshold="0.6")
ls.load(3)
"""


def mypy(tmp_path: Path, code: str, *extra: str) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e '.[test]' has it)")
    (tmp_path / "mypy.ini").write_text(CONFIG)
    snippet = tmp_path / "snippet.py"
    snippet.write_text(code)
    old = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = str(SRC)
    try:
        out, err, status = api.run(["--config-file", str(tmp_path / "mypy.ini"), "--cache-dir",
                                    str(tmp_path / "cache"), "--no-error-summary", str(snippet), *extra])
    finally:
        if old is None:
            os.environ.pop("MYPYPATH", None)
        else:
            os.environ["MYPYPATH"] = old
    return out + err, status


@pytest.mark.slow
def test_the_api_has_its_real_types_through_import_layerscope(tmp_path):
    out, status = mypy(tmp_path, USES, str(SRC / "layerscope" / "api"))
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 0 and not errors, out
    revealed = next(line for line in out.splitlines() if "Revealed type" in line)
    assert "images:" in revealed and "batch_size: int" in revealed and "-> layerscope.api.layer_maps.Maps" in revealed


@pytest.mark.slow
def test_misuse_of_the_api_is_a_type_error(tmp_path):
    out, status = mypy(tmp_path, MISUSES)
    lines = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    assert status == 1 and lines == {6, 7, 8, 9}, out


def test_every_public_function_is_fully_annotated():
    from layerscope import api

    for name in api.__all__:
        obj = getattr(api, name)
        functions = [obj] if inspect.isfunction(obj) else [
            f for n, f in inspect.getmembers(obj, inspect.isfunction) if not n.startswith("_") or n == "__init__"]
        for fn in functions:
            sig = inspect.signature(fn)
            missing = [p for p, param in sig.parameters.items()
                       if p != "self" and param.annotation is inspect.Parameter.empty]
            assert not missing and sig.return_annotation is not inspect.Parameter.empty, (name, fn.__name__, missing)


def test_api_defaults_are_the_runs():
    """``batch_size``, ``seed``, ``threshold`` and the method default to a run's (``StudyConfig``, config.yaml)."""
    import yaml

    import layerscope as ls
    from layerscope.config.schema import StudyConfig

    maps = inspect.signature(ls.maps).parameters
    assert maps["batch_size"].default == StudyConfig.batch_size
    assert inspect.signature(ls.load).parameters["seed"].default == StudyConfig.seed
    assert inspect.signature(ls.score).parameters["threshold"].default is None  # None: the schema's
    config = yaml.safe_load((SRC.parent / "conf" / "config.yaml").read_text())
    run_method = next(d["method"] for d in config["defaults"] if isinstance(d, dict) and "method" in d)
    assert maps["method"].default == run_method == "auto"
