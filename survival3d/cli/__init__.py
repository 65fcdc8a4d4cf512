"""The ``python run.py <command>`` command line.

Each command is a class registered in :data:`COMMANDS` from its own module (listed in ``_COMMAND_MODULES``) with
``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports (torch, MONAI) happen inside ``run`` so that
``--help`` and argument errors are instant.

Errors caused by the user (bad arguments, config keys, input files) print one line to stderr and exit non-zero
(2 for arguments and config, 1 for data); environment errors (disk full, permission denied, read-only file system,
a path that is a file where a folder is needed, or the reverse) print one line naming the path and exit 74; a training
loss that became NaN/inf exits 3; Ctrl-C exits 130. Anything else is a bug and keeps its traceback
(docs/reliability.md lists the guarantees).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence

from survival3d.errors import Survival3DError
from survival3d.registry import Registry

__all__ = ["COMMANDS", "main", "OneLineParser", "ENVIRONMENT_ERRNOS", "EXIT_ENVIRONMENT", "environment_error"]

COMMANDS: Registry = Registry("command")

_COMMAND_MODULES = (
    "dummy",
    "train",
    "pretrain",
    "evaluate",
    "explain",
    "preprocess",
    "predict",
    "export",
    "bench",
    "glsa",
    "flex",
    "plot",
    "tune",
)


#: errno values that are the machine's fault, not a bug: reported in one line naming the path
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}
EXIT_ENVIRONMENT = 74  # BSD sysexits EX_IOERR


def environment_error(e: BaseException) -> str | None:
    """The one-line message for an environment error (an ``OSError`` with an errno of :data:`ENVIRONMENT_ERRNOS`,
    possibly wrapped by torch/nibabel as the cause of another exception), or ``None``."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            where = e.filename if e.filename is not None else "(path not reported)"
            extra = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
            return f"{where}{extra}: {ENVIRONMENT_ERRNOS[e.errno]} ({errno.errorcode.get(e.errno, e.errno)})"
        e = e.__cause__ or e.__context__
    return None


def _torch_disk_full(e: BaseException) -> str | None:
    """torch.save reports a full disk as a RuntimeError ('... file write failed' / 'enforce fail at inline_container')."""
    text = str(e)
    if isinstance(e, RuntimeError) and ("file write failed" in text or "inline_container" in text):
        return f"writing a checkpoint failed (disk full?): {text.splitlines()[0][:200]}"
    return None


def prog_name() -> str:
    """``run.py`` when started as ``python run.py``, else ``survival3d`` (the console script)."""
    return "run.py" if sys.argv and os.path.basename(sys.argv[0]) == "run.py" else "survival3d"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that shows every option's default (unless its help already names it) and keeps the line breaks
    of a multi-line description (plain text, no reStructuredText markup)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or f"({action.default})" in text or not action.option_strings
                or action.default in (None, False, True, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def plain_text(doc: str) -> str:
    """A module docstring as ``--help`` text: no ````literal```` quotes, ``::`` → ``:``."""
    return re.sub(r"``([^`]+)``", r"\1", doc).replace("::\n", ":\n").strip()


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line on stderr with exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    for mod in _COMMAND_MODULES:
        importlib.import_module(f"survival3d.cli.{mod}")
    from survival3d import __version__

    parser = OneLineParser(prog=prog_name(), description="survival3d: 3D CT survival analysis with localisation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=OneLineParser)
    sub.required = True
    for name in COMMANDS.keys():
        cmd = COMMANDS.get(name)()
        p = sub.add_parser(name, help=cmd.help, description=plain_text(getattr(cmd, "description", cmd.help)),
                           formatter_class=HelpFormatter)
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
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as e:
        msg = environment_error(e) or _torch_disk_full(e)
        if msg is None:
            raise
        print(f"run.py {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ENVIRONMENT
