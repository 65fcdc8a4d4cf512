"""Shared pytest fixtures."""

import os

import numpy as np
import pytest
import torch

# One intra-op thread per process: the models under test are tiny, and on a loaded 2-core machine torch's thread
# pool made some training tests 5-30x slower (measured: flex digits test 51 s with 2 threads, 8 s with 1).
# Subprocesses (CLI tests, DDP workers) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def rng():
    """A fresh, unseeded random generator: tests must hold for any draw."""
    return np.random.default_rng()
