"""``python -m layerscope.view DIR``: the ``layerscope-view`` command."""
import sys

from ..cli.view import main

sys.exit(main())
