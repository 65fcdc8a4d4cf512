#!/usr/bin/env python
"""Command-line entry point: ``python run.py <command> --help``."""

import sys

from survival3d.cli import main

if __name__ == "__main__":
    sys.exit(main())
