"""The scIB suite (scib-metrics, CPU) on a real subset, and the uncorrected PCA helper."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

import armed_bio as ab


@pytest.fixture(scope="module")
def kang():
    adata = ad.read_h5ad(shared_file("kang_pbmc_5donors.h5ad"))
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 500, replace=False))].copy()
    ab.pp.log_pca(adata, n_comps=20)
    adata.obsm["X_noise"] = rng.normal(size=(adata.n_obs, 10)).astype(np.float32)
    return adata


@pytest.mark.slow
def test_scib_tidy_table_on_real_cells(kang, tmp_path):
    before = (set(kang.obsm), list(kang.obs.columns), kang.X.copy())
    table = ab.metrics.scib(kang, ["X_pca", "X_noise"], "batch", "cell_type")
    assert list(table.columns) == ["embedding", "metric_type", "metric", "value"]
    wide = table.pivot(index="embedding", columns="metric", values="value")
    for emb in ("X_pca", "X_noise"):
        assert wide.loc[emb, "Total"] == pytest.approx(
            0.4 * wide.loc[emb, "Batch correction"] + 0.6 * wide.loc[emb, "Bio conservation"]
        )
    assert {
        "iLISI",
        "KBET",
        "Graph connectivity",
        "PCR comparison",
        "Isolated labels",
        "KMeans NMI",
        "KMeans ARI",
        "Silhouette label",
        "cLISI",
        "BRAS",
    } <= set(wide.columns)
    # Cell types are real structure in PCA, absent from noise; noise is perfectly "mixed".
    assert wide.loc["X_pca", "Bio conservation"] > wide.loc["X_noise", "Bio conservation"] + 0.2
    assert wide.loc["X_noise", "iLISI"] > wide.loc["X_pca", "iLISI"]
    # The user's AnnData is not touched.
    assert set(kang.obsm) == before[0]
    assert list(kang.obs.columns) == before[1]
    assert (kang.X != before[2]).nnz == 0
    fig = ab.pl.metrics(table, save=tmp_path / "scib.png", return_fig=True)
    assert len(fig.axes[0].patches) == 3  # the three aggregate columns are outlined
    plt.close(fig)


def test_scib_bad_input(kang):
    with pytest.raises(KeyError, match="obsm keys"):
        ab.metrics.scib(kang, ["X_scVI"], "batch", "cell_type")
    with pytest.raises(KeyError, match="pre_integrated_key"):
        ab.metrics.scib(kang, ["X_pca"], "batch", "cell_type", pre_integrated_key="X_raw")
    with pytest.raises(KeyError, match="obs keys"):
        ab.metrics.scib(kang, ["X_pca"], "plate", "cell_type")
    with pytest.raises(ValueError, match="at least 91 cells"):
        ab.metrics.scib(kang, ["X_pca"], "batch", "cell_type", n_sample=50)


def test_log_pca_leaves_counts_alone(kang):
    x = kang.X.copy()
    ab.pp.log_pca(kang, n_comps=5, key_added="X_pca5")
    assert kang.obsm["X_pca5"].shape == (kang.n_obs, 5)
    assert (kang.X != x).nnz == 0
    with pytest.raises(ValueError, match="n_comps"):
        ab.pp.log_pca(kang, n_comps=0)
    logged = kang.copy()
    logged.X = logged.X.log1p()
    with pytest.raises(ValueError, match="non-integer"):
        ab.pp.log_pca(logged, key_added="X_new")
    assert "X_new" not in logged.obsm  # the failed call wrote nothing


@pytest.mark.slow
def test_scib_kmeans_restarts(kang):
    """More k-means starts change KMeans NMI/ARI only, and the aggregates follow."""
    one = ab.metrics.scib(kang, ["X_pca"], "batch", "cell_type")
    ten = ab.metrics.scib(kang, ["X_pca"], "batch", "cell_type", kmeans_n_init=10)
    one, ten = (t.set_index("metric")["value"] for t in (one, ten))
    labels = kang.obs["cell_type"].astype(str).to_numpy()
    x = kang.obsm["X_pca"]
    # One start is scib-metrics' own score; ten are the best of ten.
    for metric, value in ab.metrics.kmeans_nmi_ari(x, labels, n_init=1).items():
        assert one[metric] == pytest.approx(value)
    for metric, value in ab.metrics.kmeans_nmi_ari(x, labels, n_init=10).items():
        assert ten[metric] == pytest.approx(value)
    kmeans = ["KMeans NMI", "KMeans ARI"]
    aggregates = ["Batch correction", "Bio conservation", "Total"]
    pd.testing.assert_series_equal(one.drop(kmeans + aggregates), ten.drop(kmeans + aggregates))
    bio = ["Isolated labels", *kmeans, "Silhouette label", "cLISI"]
    assert ten["Bio conservation"] == pytest.approx(ten[bio].mean())
    assert ten["Batch correction"] == pytest.approx(one["Batch correction"])
    assert ten["Total"] == pytest.approx(0.4 * ten["Batch correction"] + 0.6 * ten[bio].mean())
    with pytest.raises(ValueError, match="kmeans_n_init must be a positive integer"):
        ab.metrics.scib(kang, ["X_pca"], "batch", "cell_type", kmeans_n_init=0)


def test_kmeans_nmi_ari_bad_input(kang):
    x, labels = kang.obsm["X_pca"], kang.obs["cell_type"].astype(str).to_numpy()
    with pytest.raises(ValueError, match="n_init must be a positive integer"):
        ab.metrics.kmeans_nmi_ari(x, labels, n_init=0)
    with pytest.raises(ValueError, match="one label per cell"):
        ab.metrics.kmeans_nmi_ari(x, labels[:-1])
