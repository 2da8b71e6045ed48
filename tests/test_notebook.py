"""experiments/notebook.py runs cell by cell, as a notebook would, and shows what it says."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_notebook_cells_run_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_NOTEBOOK_OUT", str(tmp_path))
    source = (ROOT / "experiments" / "notebook.py").read_text()
    cells = source.split("\n# %%")
    assert len(cells) == 7  # the header, then load, maps, overlay, score, Grad-CAM, wrapped ResNet-18
    namespace: dict = {"__name__": "__notebook__"}
    for i, cell in enumerate(cells):
        exec(compile(("# %%" if i else "") + cell, f"notebook.py cell {i}", "exec"), namespace)
    m, scores, tabby = namespace["m"], namespace["scores"], namespace["tabby"]
    assert m.predictions == ["Egyptian cat"]  # the bundled EfficientNet-Lite0 on the scikit-image cat
    assert len(scores) == 5 * 3 and scores["auroc"].between(0, 1).all()
    assert tabby["layer4"].shape == (1, 1, 7, 7) and np.isfinite(tabby["layer4"]).all()
    for name in ("features_layer3.png", "gradcam_efficientnet.png", "gradcam_resnet18.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow
def test_readme_from_python_examples_run(tmp_path, monkeypatch):
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # the example saves overlay.png
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    m, cam, df = namespace["m"], namespace["cam"], namespace["df"]
    assert (m.names, m[3].shape, m.predictions) == (["l2", "mean_abs", "pca"], (1, 3, 14, 14), ["Egyptian cat"])
    assert cam.layers == [3, 4] and len(df) == 15 and (tmp_path / "overlay.png").is_file()
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    assert namespace["m"]["layer4"].shape == (2, 1, 7, 7)
