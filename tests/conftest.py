"""Shared pytest fixtures."""

import os

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng():
    """A fresh, unseeded random generator: tests must hold for any draw."""
    return np.random.default_rng()
