import random

import numpy as np
import pytest
import torch

from survival3d.engine import checkpoint as ck
from survival3d.errors import InputError


def test_round_trip(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = ck.save_checkpoint(tmp_path / "c" / "last.pt", model=m.state_dict(), optimizer=opt.state_dict(), epoch=3,
                              rng=ck.rng_state(), config={"a": {"b": [1, 2]}}, split={"train": ["x"], "val": ["y"]})
    state = ck.load_checkpoint(path)
    assert state["epoch"] == 3 and state["config"] == {"a": {"b": [1, 2]}} and state["split"]["val"] == ["y"]
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(state["model"])
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(m2.parameters())
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["last.pt"]


def test_rng_state_restores_every_stream():
    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_failed_write_leaves_previous_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, epoch=1, model={"w": torch.ones(3)})
    real_save = torch.save

    def broken(obj, f, *a, **kw):
        f.write(b"partial bytes")  # a crash halfway through writing
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(path, epoch=2, model={"w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left
    assert ck.load_checkpoint(path)["epoch"] == 1
    with pytest.raises(OSError):
        monkeypatch.setattr(torch, "save", broken)
        ck.save_checkpoint(tmp_path / "new.pt", epoch=0)
    assert not (tmp_path / "new.pt").exists()


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"bad.pt: not a readable checkpoint"):
        ck.load_checkpoint(bad)
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    with pytest.raises(InputError, match="cross-validation run.*fold0"):
        ck.find_checkpoint(run)


@pytest.mark.parametrize("final", ["last", "best", None])
def test_run_folder_resolves_to_the_checkpoint_the_run_reported(tmp_path, final):
    run = tmp_path / "run"
    for name in ("best", "last"):
        ck.save_checkpoint(run / "checkpoints" / f"{name}.pt", epoch=0)
    if final is not None:
        (run / "config.yaml").write_text(f"train:\n  final: {final}\n")
    assert ck.find_checkpoint(run).name == f"{final or 'last'}.pt"
    assert ck.find_checkpoint(run, "best").name == "best.pt"  # an explicit choice wins
    (run / "config.yaml").write_text("train:\n  final: worst\n")
    with pytest.raises(InputError, match="train.final"):
        ck.find_checkpoint(run)
