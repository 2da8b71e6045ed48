"""The command-line programs: argument parsing and printing around the library, one module a command.

Each ``main(argv) -> int`` is a console script of ``pyproject.toml`` (``layerscope-<name>``) and runs as
``python -m layerscope.cli.<name>``; ``errors.command`` gives every one the same one-line errors. Nothing
of the library imports it (``tests/test_packaging.py`` checks).
"""
