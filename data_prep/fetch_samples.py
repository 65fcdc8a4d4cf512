#!/usr/bin/env python
"""Download the real CT samples (pyradiomics lung1/lung2 NRRD, TotalSegmentator JPEG 2000 DICOM series) from PyPI,
verify their SHA-256 and extract them into the cache (``$SURVIVAL3D_CACHE`` or ``~/.cache/survival3d``).

    python data_prep/fetch_samples.py [--cache DIR] [--archives DIR] [--force]
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from survival3d.data.samples import fetch_samples  # noqa: E402
from survival3d.errors import Survival3DError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=None, help="cache folder (default $SURVIVAL3D_CACHE or ~/.cache/survival3d)")
    p.add_argument("--archives", default=None, help="folder already holding the .tar.gz sdists (offline)")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = fetch_samples(args.cache, archive_dir=args.archives, force=args.force)
    except Survival3DError as e:
        print(f"fetch_samples: error: {e}", file=sys.stderr)
        return e.exit_code
    for name, path in paths.items():
        logging.getLogger("fetch_samples").info("%s: %s", name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
