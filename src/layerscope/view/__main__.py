"""``python -m layerscope.view DIR``: the ``layerscope-view`` command."""
import sys

from ..cli.view import main

if __name__ == "__main__":
    sys.exit(main())
