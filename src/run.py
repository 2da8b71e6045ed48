"""``python -m src.run ...`` from the repository root: the design card's command.

A thin alias of the installed ``layerscope`` command (``layerscope.cli.run``), kept so the command
in the product brief works from a checkout. It is not part of the wheel.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # src/ holds the layerscope package

from layerscope.cli.run import main  # noqa: E402

if __name__ == "__main__":
    main()
