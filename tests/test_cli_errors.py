"""The commands' one error wrapper (``layerscope.cli.errors.command``): what a user can cause ends as one line."""
from __future__ import annotations

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
    with pytest.raises(type(exc)):
        command(**kwargs)(_raising(exc))()


def test_a_command_that_succeeds_returns_its_own_code_and_keeps_its_name():
    @command()
    def main(argv=None) -> int:
        """Doc."""
        return 1 if argv else 0

    assert main(["a"]) == 1 and main() == 0 and main.__name__ == "main" and main.__doc__ == "Doc."
