"""The ``python run.py <command>`` command line.

Each command is a class registered in :data:`COMMANDS` from its own module (listed in ``_COMMAND_MODULES``) with
``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch, MONAI) happen inside ``run`` so that
``--help`` and argument errors are instant.

Errors caused by the user (bad arguments, config keys, input files) print one line to stderr and exit non-zero
(2 for arguments and config, 1 for data); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from survival3d.errors import Survival3DError
from survival3d.registry import Registry

__all__ = ["COMMANDS", "main", "OneLineParser"]

COMMANDS: Registry = Registry("command")

_COMMAND_MODULES = (
    "dummy",
    "train",
    "evaluate",
    "explain",
    "preprocess",
    "bench",
    "glsa",
    "flex",
    "plot",
    "tune",
)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line on stderr with exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    for mod in _COMMAND_MODULES:
        importlib.import_module(f"survival3d.cli.{mod}")
    parser = OneLineParser(prog="run.py", description="survival3d: 3D CT survival analysis with localisation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=OneLineParser)
    sub.required = True
    for name in COMMANDS.keys():
        cmd = COMMANDS.get(name)()
        p = sub.add_parser(name, help=cmd.help, description=getattr(cmd, "description", cmd.help))
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._command.run(args) or 0)
    except Survival3DError as e:
        print(f"run.py {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"run.py {args.command}: interrupted", file=sys.stderr)
        return 130
