"""Atomic file writes: output is written to a temporary file beside its target and renamed over it only when
complete, so an interrupted run never leaves a half-written file that looks valid; text, JSON, CSV and NIfTI
writers built on it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "write_text", "write_json", "write_csv", "write_nifti", "FolderLock",
           "remove_stale_temps", "atomic_folder"]


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


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None,
               allow_nan: bool = True) -> Path:
    """Write ``obj`` as JSON (ending in a newline) atomically; ``default`` and ``allow_nan`` as for :func:`json.dumps`."""
    return write_text(path, json.dumps(obj, indent=indent, default=default, allow_nan=allow_nan) + "\n")


def write_csv(path: str | os.PathLike, frame, *, index: bool = False, **to_csv_kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (full float precision, no index by default)."""
    with atomic_write(path, newline="") as f:
        frame.to_csv(f, index=index, **to_csv_kwargs)
    return Path(path)


def write_nifti(path: str | os.PathLike, array, affine, *, dtype=None, xyzt_units: str | Sequence[str] | None = None,
                qform_code: int | None = None, sform_code: int | None = None) -> Path:
    """Write a NIfTI-1 image atomically (``.nii.gz`` is gzip-compressed, ``.nii`` not: nibabel decides by name).

    Args:
        path: the target file.
        array: the voxels, written as they are unless ``dtype`` is given.
        affine: 4x4 voxel-to-world matrix.
        dtype: cast the voxels to this dtype first.
        xyzt_units: spatial unit, or (spatial, temporal) units, e.g. ``"mm"`` or ``("mm", "sec")``; ``None``
            leaves them unknown.
        qform_code, sform_code: store ``affine`` as qform / sform with this code (1 = scanner); ``None`` keeps
            nibabel's defaults for a new image (sform code 2 "aligned", qform code 0 "unknown").

    Returns:
        ``path``.
    """
    import nibabel as nib
    import numpy as np

    data = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
    aff = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data, aff)
    if xyzt_units is not None:
        img.header.set_xyzt_units(*((xyzt_units,) if isinstance(xyzt_units, str) else tuple(xyzt_units)))
    if qform_code is not None:
        img.set_qform(aff, code=int(qform_code))
    if sform_code is not None:
        img.set_sform(aff, code=int(sform_code))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left beside ``folder/name`` when a process was killed while
    writing it (``.<name>.<random>.tmp*``); returns what was removed. Call it only while holding the folder's lock."""
    removed = []
    for p in Path(folder).glob(f".{name}.*.tmp*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class FolderLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``folder/.lock``, held until :meth:`release` (or process exit).

    The kernel drops the lock when its process dies (even by ``kill -9``), so a lock file left by a crash is never
    stale: the next :meth:`acquire` succeeds. The file records the holder's pid, for the message of a refused lock.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` when another process holds it."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid written by the process holding the lock ('?' when unknown)."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; when the block ends cleanly, the folder replaces ``path``
    (an existing ``path`` is moved aside and deleted, so old and new outputs are never mixed); on an exception the
    temporary folder is deleted and ``path`` is left as it was.

    Files already in ``path`` are not carried over: the command writes its whole output into the new folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "output path exists and is not a folder", str(path))
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "x")
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old / "x", path)  # put the previous output back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
