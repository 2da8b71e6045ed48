"""``python -m layerscope.figures DIR``: the ``layerscope-figures`` command."""
import sys

from ..cli.figures import main

if __name__ == "__main__":
    sys.exit(main())
