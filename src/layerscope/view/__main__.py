"""``python -m layerscope.view DIR``: the ``layerscope-view`` command."""
import sys

from .command import main

sys.exit(main())
