"""read_manifest / write_manifest: round trip, path resolution and one clear InputError per kind of bad row."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival3d.data.manifest import REQUIRED_COLUMNS, read_manifest, write_manifest
from survival3d.errors import InputError


def _folder(tmp_path: Path, rng, n: int = 5) -> pd.DataFrame:
    """A manifest frame whose image/mask files exist (empty files are enough for validation)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = []
    for i in range(n):
        img = tmp_path / "images" / f"c{i}.nii.gz"
        img.write_bytes(b"")
        mask = tmp_path / "masks" / f"c{i}.nii.gz"
        mask.write_bytes(b"")
        rows.append(
            {
                "id": f"{i:03d}",
                "image": str(img),  # absolute: written relative
                "mask": f"masks/c{i}.nii.gz" if i % 2 else None,  # relative, or blank
                "time": float(rng.uniform(0, 100)),
                "event": int(rng.integers(0, 2)),
                "expected_time": float(rng.uniform(1, 100)),
                "sex": rng.choice(["F", "M"]),
            }
        )
    return pd.DataFrame(rows)


def test_round_trip_resolves_paths_and_keeps_types(tmp_path, rng):
    df = _folder(tmp_path, rng)
    path = write_manifest(df, tmp_path / "manifest.csv")
    text = path.read_text().splitlines()
    assert text[0].split(",")[: len(REQUIRED_COLUMNS) + 1] == ["id", "image", "mask", "time", "event"]
    assert str(tmp_path) not in path.read_text()  # written relative to the manifest folder
    out = read_manifest(path)
    assert list(out["id"]) == list(df["id"])  # "000" stays a string, not 0
    np.testing.assert_allclose(out["time"], df["time"])
    assert out["event"].dtype.kind == "i" and list(out["event"]) == list(df["event"])
    for got, want in zip(out["image"], df["image"]):
        assert Path(got).is_absolute() and Path(got).resolve() == Path(want).resolve()
    assert [m is None for m in out["mask"]] == [i % 2 == 0 for i in range(len(df))]
    assert all(Path(m).exists() for m in out["mask"] if m is not None)
    assert list(out["sex"]) == list(df["sex"])


def test_manifest_folder_can_be_moved(tmp_path, rng):
    (tmp_path / "a").mkdir()
    df = _folder(tmp_path / "a", rng)
    write_manifest(df, tmp_path / "a" / "manifest.csv")
    (tmp_path / "a").rename(tmp_path / "b")
    out = read_manifest(tmp_path / "b" / "manifest.csv")
    assert all(p.startswith(str(tmp_path / "b")) for p in out["image"])


def _write_raw(tmp_path: Path, df: pd.DataFrame) -> Path:
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "column, corrupt, words",
    [
        ("time", lambda df: df.assign(time=df["time"].where(df.index != 2, np.nan)), "NaN"),
        ("time", lambda df: df.assign(time=df["time"].where(df.index != 3, -1.5)), "negative"),
        ("time", lambda df: df.assign(time=df["time"].astype(object).where(df.index != 1, "soon")), "non-numeric"),
        ("event", lambda df: df.assign(event=df["event"].where(df.index != 4, 2)), "0 (censored) or 1"),
        ("id", lambda df: df.assign(id=df["id"].where(df.index != 3, df["id"][0])), "duplicate"),
        ("image", lambda df: df.assign(image=df["image"].where(df.index != 2, "images/nope.nii.gz")), "not exist"),
        ("mask", lambda df: df.assign(mask=df["mask"].where(df.index != 1, "masks/gone.nii.gz")), "not exist"),
        ("event", lambda df: df.drop(columns=["event"]), "missing required column"),
        ("expected_time", lambda df: df.assign(expected_time=-df["expected_time"]), "negative"),
    ],
)
def test_bad_rows_name_file_column_and_line(tmp_path, rng, column, corrupt, words):
    df = corrupt(_folder(tmp_path, rng))
    df["image"] = [Path(p).relative_to(tmp_path).as_posix() if Path(p).is_absolute() else p for p in df["image"]]
    path = _write_raw(tmp_path, df)
    with pytest.raises(InputError) as err:
        read_manifest(path)
    msg = str(err.value)
    assert err.value.path == str(path) and err.value.field == column
    assert str(path) in msg and f"[{column}]" in msg and words in msg
    if "missing required" not in words:
        assert "line " in msg  # points at the offending CSV line


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "none.csv")
    path = tmp_path / "empty.csv"
    path.write_text("id,image,time,event\n")
    with pytest.raises(InputError, match="no rows"):
        read_manifest(path)


def test_check_files_false_skips_existence(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,image,time,event\na,later.nii.gz,3,1\n")
    out = read_manifest(path, check_files=False)
    assert out["image"][0] == str(tmp_path.resolve() / "later.nii.gz")


def test_write_is_atomic(tmp_path, rng, monkeypatch):
    df = _folder(tmp_path, rng)
    target = tmp_path / "manifest.csv"

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError):
        write_manifest(df, target)
    assert not target.exists() and not list(tmp_path.glob(".manifest.csv.*"))


def test_write_requires_required_columns(tmp_path):
    with pytest.raises(ValueError, match="time"):
        write_manifest(pd.DataFrame({"id": ["a"], "image": ["x"], "event": [1]}), tmp_path / "m.csv")
