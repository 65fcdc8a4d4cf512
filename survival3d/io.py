"""Atomic file writes: output is written to a temporary file beside its target and renamed over it only when
complete, so an interrupted run never leaves a half-written file that looks valid."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a file name (nibabel, pandas, matplotlib).

    On a clean exit the temporary file is renamed over ``path`` (readable by all, like a normal file); on an
    exception it is removed. ``suffix`` defaults to ``path``'s suffix (``.nii.gz`` kept whole) so writers that
    choose the format from the name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it over ``path`` when the block ends cleanly.

    Args:
        path: the target file (its folder is created).
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        fsync: flush to disk before the rename (checkpoints).
        open_kwargs: passed to :func:`open` (e.g. ``newline=""`` for CSV).
    """
    with atomic_path(path, suffix="") as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
