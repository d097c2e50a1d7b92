"""Shared fixtures. One torch thread: two threads on these shared cores slow epochs 10-100x."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import armed_bio as ab

torch.set_num_threads(1)
warnings.filterwarnings("ignore", module="lightning")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
# Let pytest's caplog see armed_bio's log lines (the package handler does not propagate).
logging.getLogger("armed_bio").propagate = True

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Quiet, CPU-only training for tests.
FAST = {"accelerator": "cpu", "enable_progress_bar": False}


def shared_file(name: str) -> Path:
    """A real dataset from ../shared/data; skips the test when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture
def sim():
    """Small simulated counts: 300 cells x 60 genes, 3 batches, 3 cell types."""
    return ab.datasets.simulate_counts(n_cells=300, n_genes=60, n_batches=3, n_cell_types=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A mixed-mode model trained briefly on a small simulation (shared within a module)."""
    adata = ab.datasets.simulate_counts(n_cells=400, n_genes=80, n_batches=3, n_cell_types=3)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = ab.model.ArmedRNA(adata, seed=0)
    model.train(max_epochs=3, **FAST)
    return model
