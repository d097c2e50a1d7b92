"""The post-hoc batch diagnostic: a fresh classifier predicting the batch, overall and per label."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import assert_unchanged, snapshot

import armed_bio as ab


@pytest.fixture
def embedded():
    """Two labels x three batches; one embedding mixes batches only across labels."""
    rng = np.random.default_rng(0)
    n = 600
    batch = rng.integers(0, 3, n)
    # Label mix differs by batch: batch 0 is mostly label a, so the label predicts the batch.
    label = np.where(rng.random(n) < np.array([0.8, 0.3, 0.3])[batch], "a", "b")
    noise = rng.normal(size=(n, 4))
    adata = ad.AnnData(
        X=np.ones((n, 1), dtype=np.float32),
        obs=pd.DataFrame(
            {"batch": batch.astype(str), "label": label}, index=[f"c{i}" for i in range(n)]
        ),
    )
    adata.obsm["X_mixed"] = noise
    adata.obsm["X_batch"] = noise + 3.0 * np.eye(4)[batch]
    adata.obsm["X_label_only"] = noise + 3.0 * np.eye(4)[(label == "a").astype(int)]
    return adata


def test_batch_left_or_not(embedded):
    snap = snapshot(embedded)
    table = ab.metrics.batch_predictability(
        embedded, ["X_mixed", "X_batch", "X_label_only"], "batch", label_key="label"
    )
    assert_unchanged(embedded, snap)
    assert set(table["group"]) == {"all cells", "a", "b", "within labels"}
    score = table.set_index(["embedding", "classifier", "group"])["balanced_accuracy"]
    for kind in ("linear", "knn"):
        assert score[("X_batch", kind, "all cells")] > 0.9
        assert score[("X_batch", kind, "within labels")] > 0.9
        assert abs(score[("X_mixed", kind, "all cells")] - 1 / 3) < 0.1
        # The label carries some batch over all cells, none within a label.
        assert score[("X_label_only", kind, "all cells")] > score[("X_mixed", kind, "all cells")]
        assert abs(score[("X_label_only", kind, "within labels")] - 1 / 3) < 0.1
    np.testing.assert_allclose(table["chance"].dropna(), 1 / 3)


def test_same_seed_same_table_and_small_groups_are_reported(embedded):
    a = ab.metrics.batch_predictability(embedded, ["X_batch"], "batch", n_sample=200, seed=1)
    b = ab.metrics.batch_predictability(embedded, ["X_batch"], "batch", n_sample=200, seed=1)
    pd.testing.assert_frame_equal(a, b)
    small = embedded[:40].copy()
    small.obs["label"] = ["x"] + ["y"] * 39
    table = ab.metrics.batch_predictability(small, ["X_batch"], "batch", label_key="label")
    row = table[(table["group"] == "x") & (table["classifier"] == "linear")].iloc[0]
    assert np.isnan(row["balanced_accuracy"])
    assert "fewer than 2 batches" in row["note"]


def test_bad_arguments(embedded):
    with pytest.raises(KeyError):
        ab.metrics.batch_predictability(embedded, ["X_none"], "batch")
    with pytest.raises(KeyError):
        ab.metrics.batch_predictability(embedded, ["X_batch"], "plate")
    with pytest.raises(ValueError, match="classifiers"):
        ab.metrics.batch_predictability(embedded, ["X_batch"], "batch", classifiers=["svm"])
    with pytest.raises(ValueError, match="n_splits"):
        ab.metrics.batch_predictability(embedded, ["X_batch"], "batch", n_splits=1)
