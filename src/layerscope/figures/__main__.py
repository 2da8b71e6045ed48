"""``python -m layerscope.figures DIR``: the ``layerscope-figures`` command."""
import sys

from ..cli.figures import main

sys.exit(main())
