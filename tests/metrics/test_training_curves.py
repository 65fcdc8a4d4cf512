"""run.py plot: the training-curve figure from a run's metrics.csv (and from each fold's)."""

import numpy as np
import pandas as pd
import pytest

from survival3d.cli import main
from survival3d.cli.plot import write_training_curves
from survival3d.errors import InputError


def _metrics(rng, epochs=6, diagnostics=True):
    df = pd.DataFrame({"epoch": np.arange(1, epochs + 1), "train_loss": rng.uniform(2, 5, epochs),
                       "val_loss": rng.uniform(2, 5, epochs), "c_index": rng.uniform(0.5, 0.9, epochs),
                       "c_index_oracle": np.full(epochs, 0.8)})
    if diagnostics:
        df["beta"] = rng.uniform(4, 6, epochs)
        df["loc_bias"] = 50 + rng.normal(0, 0.01, epochs)
        df["p_lesion"] = rng.uniform(0, 1, epochs)
        df["p_max"] = rng.uniform(0, 1, epochs)
        df["p_entropy"] = rng.uniform(0, 3, epochs)
        df["loc_sd"] = rng.uniform(0, 5, epochs)
        df["var"] = np.nan  # not learned: an empty column
    return df


def test_plot_single_run_and_folds(tmp_path, rng, capsys):
    run = tmp_path / "r"
    run.mkdir()
    _metrics(rng).to_csv(run / "metrics.csv", index=False)
    assert main(["plot", str(run)]) == 0
    png = run / "training_curves.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert str(png) in capsys.readouterr().out

    cv = tmp_path / "cv"
    for k in range(2):
        (cv / f"fold{k}").mkdir(parents=True)
        _metrics(rng, diagnostics=k == 0).to_csv(cv / f"fold{k}" / "metrics.csv", index=False)  # fold1: old columns only
    written = write_training_curves(cv)
    assert written == [cv / "fold0" / "training_curves.png", cv / "fold1" / "training_curves.png"]
    assert all(p.is_file() for p in written)


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err
    assert "no such run folder" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no metrics.csv"):
        write_training_curves(tmp_path / "empty")
