#!/usr/bin/env python
"""Preprocess an OSIC tree: the same as ``python run.py preprocess --osic ROOT --survival CSV --out DIR [...]``
(all ``run.py preprocess`` options are accepted).

    python data_prep/preprocess_osic.py --osic /data/osic --survival /data/osic_survival.csv --out /data/osic_pp \
        --workers 4 [--lungmask-weights unet_r231-d5d2fc3d.pth]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from survival3d.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    sys.exit(main(["preprocess", *argv]))
