"""Real CT sample data fetched from PyPI source distributions, checked by SHA-256 and cached.

Two packages on PyPI ship small real CTs in their source archives:

* ``pyradiomics==3.0.1``: ``data/lung1_image.nrrd`` (512×512×48, 0.57×0.57×5 mm) and ``data/lung2_image.nrrd``
  (512×512×61, 0.63×0.63×5 mm), chest CTs in Hounsfield units (the pyradiomics test cases, from the LIDC/RIDER
  collections).
* ``totalsegmentator==2.18.0``: ``tests/reference_files/example_ct_dicom/``, a 20-slice JPEG 2000 (lossless)
  DICOM CT series of the upper abdomen (lung bases at most).

:func:`fetch_samples` downloads each archive once (PEP 691 JSON simple index + HTTPS, falling back to
``pip download``), verifies the pinned SHA-256, extracts only the members needed into the cache and deletes the
archive. The cache is ``$SURVIVAL3D_CACHE`` or ``~/.cache/survival3d``; data never lives in the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from survival3d.errors import InputError
from survival3d.io import write_text

__all__ = ["SampleArchive", "SAMPLE_ARCHIVES", "cache_root", "fetch_samples", "sample_paths"]

logger = logging.getLogger(__name__)

_SIMPLE_INDEX = "https://pypi.org/simple/{name}/"


@dataclass(frozen=True)
class SampleArchive:
    """One PyPI source archive and the members taken from it.

    Args:
        package: PyPI project name.
        version: exact version.
        sha256: expected SHA-256 of the ``.tar.gz`` source distribution.
        members: member paths inside the archive (below its top folder); a trailing ``/`` takes a whole folder.
        names: the cache name of each member (same order).
    """

    package: str
    version: str
    sha256: str
    members: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.package}-{self.version}.tar.gz"


SAMPLE_ARCHIVES: tuple[SampleArchive, ...] = (
    SampleArchive(
        package="pyradiomics",
        version="3.0.1",
        sha256="47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
        members=("data/lung1_image.nrrd", "data/lung2_image.nrrd"),
        names=("lung1_image.nrrd", "lung2_image.nrrd"),
    ),
    SampleArchive(
        package="totalsegmentator",
        version="2.18.0",
        sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        members=("tests/reference_files/example_ct_dicom/",),
        names=("example_ct_dicom",),
    ),
)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The sample cache: ``cache_dir``, else ``$SURVIVAL3D_CACHE``, else ``~/.cache/survival3d``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SURVIVAL3D_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "survival3d"


def sample_paths(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Where each sample lives in the cache (whether or not it has been fetched): ``{"lung1": ..., "lung2": ...,
    "dicom": ...}``."""
    root = cache_root(cache_dir) / "samples"
    return {
        "lung1": root / "lung1_image.nrrd",
        "lung2": root / "lung2_image.nrrd",
        "dicom": root / "example_ct_dicom",
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_https(archive: SampleArchive, dest: Path, timeout: float) -> None:
    """Find the sdist URL through the PEP 691 JSON simple index and stream it to ``dest``."""
    req = urllib.request.Request(
        _SIMPLE_INDEX.format(name=archive.package), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        index = json.load(r)
    files = [f for f in index.get("files", []) if f.get("filename") == archive.filename]
    if not files:
        raise FileNotFoundError(f"{archive.filename} is not listed on the package index")
    with urllib.request.urlopen(files[0]["url"], timeout=timeout) as r, open(dest, "wb") as out:
        shutil.copyfileobj(r, out, length=1 << 20)


def _download_pip(archive: SampleArchive, dest: Path, timeout: float) -> None:
    """``pip download`` of the source archive (needs numpy and setuptools for metadata)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
            "--timeout", str(int(timeout)), "-d", tmp, f"{archive.package}=={archive.version}",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        shutil.move(str(Path(tmp) / archive.filename), dest)


def _obtain_archive(archive: SampleArchive, workdir: Path, archive_dir: Path | None, timeout: float) -> Path:
    """A verified copy of the archive in ``workdir``: from ``archive_dir`` when it holds one, else downloaded."""
    dest = workdir / archive.filename
    local = None if archive_dir is None else Path(archive_dir) / archive.filename
    if local is not None and local.is_file():
        shutil.copyfile(local, dest)
        sources = [f"local copy {local}"]
    else:
        sources = []
        for how, fn in (("PyPI simple index", _download_https), ("pip download", _download_pip)):
            try:
                fn(archive, dest, timeout)
                sources.append(how)
                break
            except (OSError, urllib.error.URLError, subprocess.CalledProcessError, ValueError) as e:
                logger.warning("could not fetch %s via %s: %s", archive.filename, how, e)
                dest.unlink(missing_ok=True)
        else:
            raise InputError(
                f"could not download {archive.filename} from PyPI (network needed once; or pass an archive folder)",
                path=archive.filename,
            )
    digest = _sha256(dest)
    if digest != archive.sha256:
        dest.unlink(missing_ok=True)
        raise InputError(
            f"SHA-256 mismatch: expected {archive.sha256}, got {digest} ({sources[0]})", path=archive.filename,
            field="sha256",
        )
    logger.info("fetched %s (%s), sha256 verified", archive.filename, sources[0])
    return dest


def _extract(archive: SampleArchive, tarball: Path, staging: Path) -> None:
    """Extract only ``archive.members`` (files or whole folders) into ``staging/<name>``."""
    top = f"{archive.package}-{archive.version}/"
    with tarfile.open(tarball, "r:gz") as tf:
        for member, name in zip(archive.members, archive.names):
            prefix = top + member
            picked = [
                m for m in tf.getmembers()
                if m.isfile() and (m.name == prefix or (prefix.endswith("/") and m.name.startswith(prefix)))
            ]  # fmt: skip
            if not picked:
                raise InputError(f"member {member!r} not found in the archive", path=tarball)
            for m in picked:
                rel = Path(name) if m.name == prefix else Path(name) / m.name[len(prefix) :]
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)


def fetch_samples(
    cache_dir: str | Path | None = None,
    *,
    archive_dir: str | Path | None = None,
    force: bool = False,
    timeout: float = 120.0,
) -> dict[str, Path]:
    """Make sure the real CT samples are in the cache and return their paths (see :func:`sample_paths`).

    Args:
        cache_dir: cache folder (default: ``$SURVIVAL3D_CACHE`` or ``~/.cache/survival3d``).
        archive_dir: a folder already holding the ``.tar.gz`` sdists (offline use); they are still SHA-256 checked.
        force: fetch again even when the samples are present.
        timeout: network timeout per request in seconds.

    Raises:
        InputError: download impossible or checksum mismatch (nothing is left in the cache then).
    """
    root = cache_root(cache_dir) / "samples"
    root.mkdir(parents=True, exist_ok=True)
    for archive in SAMPLE_ARCHIVES:
        stamp = root / f".{archive.package}-{archive.version}.sha256"
        present = all((root / n).exists() for n in archive.names)
        if present and not force and stamp.is_file() and stamp.read_text().strip() == archive.sha256:
            continue
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            tmp = Path(tmp)
            tarball = _obtain_archive(archive, tmp, None if archive_dir is None else Path(archive_dir), timeout)
            staging = tmp / "staging"
            _extract(archive, tarball, staging)
            for name in archive.names:  # replace atomically, member by member
                final = root / name
                if final.is_dir():
                    shutil.rmtree(final)
                elif final.exists():
                    final.unlink()
                os.replace(staging / name, final)
            write_text(stamp, archive.sha256 + "\n")
    return sample_paths(cache_dir)
