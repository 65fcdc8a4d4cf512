"""``python -m survival3d.cli <command>``: the same entry point as ``run.py`` and the ``survival3d`` script."""

import sys

from survival3d.cli import main

sys.exit(main())
