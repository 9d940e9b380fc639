"""``python -m audiokv``: the ``audiokv`` command."""

import sys

from audiokv.cli import main

sys.exit(main())
