"""The commands' one error wrapper (``layerscope.cli.errors.command``): what a user can cause ends as one line."""
from __future__ import annotations

import re

import numpy as np
import pytest

from layerscope.cli.errors import INTERRUPTED, UsageError, command


def _raising(exc: BaseException):
    def main(argv=None) -> int:
        raise exc
    return main


@pytest.mark.parametrize("exc, kwargs, code, line", [
    (UsageError("--top 0: expected an int >= 1"), {"errors": ()}, 2, "error: --top 0: expected an int >= 1"),
    (ValueError("a.csv: no column 'layer'"), {}, 2, "error: a.csv: no column 'layer'"),
    (FileNotFoundError("run/: no such folder"), {}, 2, "error: run/: no such folder"),
    (PermissionError(13, "Permission denied", "/ro/page.html"), {"write": "; the earlier page is kept"}, 2,
     "error: cannot write /ro/page.html: Permission denied; the earlier page is kept"),
    (OSError(28, "No space left on device"), {"write": ""}, 2, "error: cannot write: No space left on device"),
    (KeyboardInterrupt(), {}, INTERRUPTED, "interrupted"),
])
def test_errors_a_user_can_cause_end_as_one_line_and_an_exit_code(exc, kwargs, code, line, capsys):
    assert command(**kwargs)(_raising(exc))(["x"]) == code
    out, err = capsys.readouterr()
    assert out == "" and err == line + "\n"


@pytest.mark.parametrize("exc, kwargs", [(PermissionError(13, "Permission denied", "x"), {}),  # no write= given
                                         (ValueError("x"), {"errors": (FileNotFoundError,)}),
                                         (KeyError("bug"), {})])
def test_what_a_command_does_not_expect_keeps_its_traceback(exc, kwargs):
    with pytest.raises(type(exc), match=re.escape(str(exc))) as raised:
        command(**kwargs)(_raising(exc))()
    assert raised.value is exc


def test_a_command_that_succeeds_returns_its_own_code_and_keeps_its_name():
    @command()
    def main(argv=None) -> int:
        """Doc."""
        return 1 if argv else 0

    assert main(["a"]) == 1 and main() == 0 and main.__name__ == "main" and main.__doc__ == "Doc."


def test_python_m_entries_of_the_view_and_figures_packages_are_their_commands():
    """``python -m layerscope.view`` and ``python -m layerscope.figures`` run the ``cli`` commands (imported here,
    they run nothing: the ``__main__`` guard)."""
    import importlib

    from layerscope.cli import figures, view

    assert importlib.import_module("layerscope.view.__main__").main is view.main
    assert importlib.import_module("layerscope.figures.__main__").main is figures.main


def test_export_writes_an_mvtec_tree_and_refuses_a_folder_it_would_overwrite(tmp_path, capsys):
    from PIL import Image

    from layerscope.cli.export import main

    out = tmp_path / "mvtec"
    args = [str(out), "--textures", "brick", "--defects", "spot", "--per-combination", "1", "--good", "1",
            "--train", "1", "--size", "32"]
    assert main(args) == 0
    assert "wrote 1 categories" in capsys.readouterr().out
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert files == ["brick/ground_truth/spot/000_mask.png", "brick/test/good/000.png", "brick/test/spot/000.png",
                     "brick/train/good/000.png"]
    mask = np.asarray(Image.open(out / "brick/ground_truth/spot/000_mask.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    assert main(args) == 2  # the category folder exists and is not empty: nothing is overwritten
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "exists and is not empty" in err and len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before
