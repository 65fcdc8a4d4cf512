"""Exception types for problems with user input.

Everything a user can get wrong (a config key, a CLI argument, a CSV value, a corrupt DICOM file) raises one of
these. The CLI turns them into one line on stderr and a non-zero exit code; a traceback is reserved for bugs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Survival3DError", "ConfigError", "InputError"]


class Survival3DError(ValueError):
    """Base class for errors caused by user input rather than by a bug."""

    exit_code = 1


class ConfigError(Survival3DError):
    """An unknown, mistyped or invalid configuration key or value, or a bad command-line argument."""

    exit_code = 2


class InputError(Survival3DError):
    """Bad input data. The message names the offending file and, where there is one, the field.

    Args:
        message: what is wrong, in words a user can act on.
        path: the file (or folder) the problem is in.
        field: the column, DICOM tag or config field concerned.
    """

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field = field
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if field is not None:
                where += f" [{field}]"
            where += ": "
        elif field is not None:
            where = f"[{field}] "
        super().__init__(where + message)
