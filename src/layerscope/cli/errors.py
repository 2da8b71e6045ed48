"""How every command ends on input it cannot use: one line on stderr, an exit code, no traceback.

A command's ``main(argv) -> int`` raises; ``command`` turns what a user can cause into ``error: <message>``
(exit 2) and Ctrl-C into ``interrupted`` (exit 130). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

Main = TypeVar("Main", bound=Callable[..., int])
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UsageError(Exception):
    """A bad option or argument, found before any work: ``error: <message>``, exit code 2."""


def fail(message: str, code: int = 2) -> int:
    """Print ``error: <message>`` on stderr; returns ``code`` for the command to return."""
    print(f"error: {message}", file=sys.stderr)
    return code


class Parser(argparse.ArgumentParser):
    """Every command's argument parser: a bad option is one line, ``error: <message> (see <prog> --help)``,
    and exit code 2 (argparse's own prints its whole usage first)."""

    def error(self, message: str) -> NoReturn:
        sys.exit(fail(f"{message} (see {self.prog} --help)"))


def command(errors: tuple[type[Exception], ...] = (ValueError, FileNotFoundError),
            write: str | None = None) -> Callable[[Main], Main]:
    """Decorate a command's ``main`` so that the errors a user can cause end as one line.

    Args:
        errors: exceptions whose message says it all (bad data, a missing file, each naming the file):
            ``error: <message>``, exit 2. ``UsageError`` always counts.
        write: None: any other ``OSError`` is not expected and keeps its traceback. A string: any other
            ``OSError`` is a failed write (a read-only folder, a full disk), shown as
            ``error: cannot write <file>: <reason><write>`` (``write``: what the user should know beside it).

    Returns:
        A decorator; the decorated ``main`` returns the exit code instead of raising.
    """
    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UsageError as e:
                return fail(str(e))
            except errors as e:
                return fail(str(e))
            except OSError as e:
                if write is None:
                    raise
                where = f" {e.filename}" if e.filename else ""
                return fail(f"cannot write{where}: {e.strerror or e}{write}")
            except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a bug: no traceback
                print("interrupted", file=sys.stderr)
                return INTERRUPTED

        return run  # type: ignore[return-value]

    return decorate
