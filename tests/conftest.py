"""Shared fixtures and helpers.

One torch thread: two threads on these shared cores slow epochs 10-100x. Trained models that
several test files use are built once per session here. The real datasets are read from
``$ARMED_BIO_DATA`` (default: ``../shared/data`` beside the checkout); tests that need one skip
when it is not there.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import armed_bio as ab

torch.set_num_threads(1)
warnings.filterwarnings("ignore", module="lightning")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
# Let pytest's caplog see armed_bio's log lines (the package handler does not propagate).
logging.getLogger("armed_bio").propagate = True

SHARED_DATA = Path(
    os.environ.get("ARMED_BIO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# Quiet, CPU-only training for tests.
FAST = {"accelerator": "cpu", "enable_progress_bar": False}


def shared_file(name: str) -> Path:
    """A real dataset from ``$ARMED_BIO_DATA``; skips the test when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available (set ARMED_BIO_DATA to the shared data folder)")
    return path


def snapshot(adata) -> dict:
    """Everything a read-only call must leave as it was: obs, var, X, uns/obsm/layers."""
    x = adata.X
    if x is not None:
        x = x.toarray() if sparse.issparse(x) else np.array(x, copy=True)
    return {
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "X": x,
        "uns": sorted(adata.uns.keys()),
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "layers": sorted(adata.layers.keys()),
    }


def assert_unchanged(adata, before: dict) -> None:
    """Assert that ``adata`` matches its :func:`snapshot` ``before``."""
    after = snapshot(adata)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    if before["X"] is None:
        assert after["X"] is None
    else:
        np.testing.assert_array_equal(after["X"], before["X"])
    assert after["uns"] == before["uns"]
    assert list(after["obsm"]) == list(before["obsm"])
    for key, value in before["obsm"].items():
        np.testing.assert_array_equal(after["obsm"][key], value)
    assert after["layers"] == before["layers"]


def crops_with_truth(seed: int = 0, n_fields: int = 6, n_batches: int = 3):
    """Crops cut by the front end from simulated fields, each with its true phenotype."""
    fields, batches, truth = ab.datasets.simulate_fields(
        n_fields=n_fields, n_batches=n_batches, n_nuclei=14, size=(96, 96), seed=seed
    )
    adata = ab.pp.crop_objects(fields, batch=batches, crop_size=20, progress_bar=False)
    # Each crop's phenotype: the true nucleus nearest to its centre in the same field.
    phen = []
    for _, row in adata.obs.iterrows():
        t = truth[truth["field"] == row["field"]]
        d = np.hypot(t["y"] - row["centroid_y"], t["x"] - row["centroid_x"])
        phen.append(t["phenotype"].to_numpy()[int(np.argmin(d))])
    adata.obs["phenotype"] = pd.Categorical(phen)
    return adata


@pytest.fixture
def sim():
    """Small simulated counts: 300 cells x 60 genes, 3 batches, 3 cell types."""
    return ab.datasets.simulate_counts(n_cells=300, n_genes=60, n_batches=3, n_cell_types=3)


@pytest.fixture(scope="session")
def fields():
    """Simulated fields (4, 2 batches) with their true nuclei: ``(fields, batches, truth)``."""
    return ab.datasets.simulate_fields(n_fields=4, n_batches=2, n_nuclei=12, size=(96, 96), seed=3)


@pytest.fixture
def crops16(fields):
    """16 x 16 crops cut from :func:`fields` (a fresh AnnData per test)."""
    f, b, _ = fields
    return ab.pp.crop_objects(f, batch=b, crop_size=16, progress_bar=False)


@pytest.fixture(scope="session")
def trained():
    """A mixed-mode model with labels trained briefly on a small simulation."""
    adata = ab.datasets.simulate_counts(n_cells=400, n_genes=80, n_batches=3, n_cell_types=3)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = ab.model.ArmedRNA(adata, seed=0)
    model.train(max_epochs=3, **FAST)
    return model


@pytest.fixture(scope="session")
def crops():
    """Simulated crops of 3 batches with a phenotype per crop (read-only: copy to change)."""
    return crops_with_truth()


@pytest.fixture(scope="session")
def image_classifier(crops):
    """An ``ArmedImageClassifier`` trained on :func:`crops`."""
    adata = crops.copy()
    ab.model.ArmedImageClassifier.setup_anndata(adata, batch_key="batch", labels_key="phenotype")
    model = ab.model.ArmedImageClassifier(adata, channels=(8, 16), n_latent=8, seed=0)
    model.train(max_epochs=15, batch_size=32, seed=0, **FAST)
    return model


@pytest.fixture(scope="session")
def image_autoencoder(crops):
    """An ``ArmedImage`` autoencoder trained on :func:`crops`."""
    adata = crops.copy()
    ab.model.ArmedImage.setup_anndata(adata, batch_key="batch")
    model = ab.model.ArmedImage(adata, channels=(8, 16), re_channels=(8,), n_latent=8, seed=0)
    model.train(max_epochs=6, batch_size=32, seed=0, **FAST)
    return model
