"""cluster_scores against sklearn, and the embeddings plot rendered for real (Agg)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from anndata import AnnData
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

import armed_bio as ab


@pytest.fixture
def embedded():
    rng = np.random.default_rng(0)
    n = 120
    adata = AnnData(np.zeros((n, 1), dtype=np.float32))
    adata.obs["batch"] = np.repeat(["a", "b", "c"], n // 3)
    adata.obs["label"] = np.tile(["x", "y"], n // 2)
    adata.obsm["X_one"] = rng.normal(size=(n, 4))
    adata.obsm["X_two"] = rng.normal(size=(n, 3)) + (adata.obs["label"] == "x").to_numpy()[:, None]
    return adata


def test_cluster_scores_reproduce_sklearn(embedded):
    table = ab.metrics.cluster_scores(embedded, ["X_one", "X_two"], "batch", "label")
    for key in ("X_one", "X_two"):
        x = embedded.obsm[key]
        for role, col in (("batch", "batch"), ("label", "label")):
            y = embedded.obs[col]
            assert table.loc[key, f"silhouette_{role}"] == silhouette_score(x, y)
            assert table.loc[key, f"calinski_harabasz_{role}"] == calinski_harabasz_score(x, y)
            assert table.loc[key, f"inv_davies_bouldin_{role}"] == 1 / davies_bouldin_score(x, y)


def test_cluster_scores_subsample_is_seeded(embedded):
    a = ab.metrics.cluster_scores(embedded, ["X_two"], "batch", "label", n_sample=60, seed=1)
    b = ab.metrics.cluster_scores(embedded, ["X_two"], "batch", "label", n_sample=60, seed=1)
    c = ab.metrics.cluster_scores(embedded, ["X_two"], "batch", "label", n_sample=60, seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_cluster_scores_bad_keys(embedded):
    with pytest.raises(KeyError, match="obsm keys"):
        ab.metrics.cluster_scores(embedded, ["X_umap"], "batch")
    with pytest.raises(KeyError, match="obs keys"):
        ab.metrics.cluster_scores(embedded, ["X_one"], "plate")
    embedded.obs["one"] = "same"
    with pytest.raises(ValueError, match="groups"):
        ab.metrics.cluster_scores(embedded, ["X_one"], "one")


def test_embeddings_plot_renders(embedded, tmp_path):
    assert ab.tl.umap(embedded, ["X_one", "X_two"]) == ["X_one_umap", "X_two_umap"]
    before = {k: v.copy() for k, v in embedded.obsm.items()}
    fig = ab.pl.embeddings(
        embedded,
        color=["batch", "label"],
        obsm_keys=["X_one", "X_two"],
        save=tmp_path / "e.png",
        return_fig=True,
    )
    assert fig.axes[0].get_title() == "X_one"
    assert len(fig.axes) == 4
    assert (tmp_path / "e.png").stat().st_size > 5000
    # Plots do not write into the AnnData.
    assert embedded.obsm.keys() == before.keys()
    plt.close(fig)
    with pytest.raises(KeyError, match="color keys"):
        ab.pl.embeddings(embedded, color=["plate"], obsm_keys=["X_one"])
    with pytest.raises(KeyError, match="obsm keys"):
        ab.pl.embeddings(embedded, color=["batch"], obsm_keys=["X_armed_re"])


@pytest.mark.slow
def test_umap_of_more_than_8192_cells():
    """Above 8,192 cells scanpy switches to pynndescent; tl.umap must work there too."""
    n = 8300
    adata = AnnData(np.zeros((n, 1), dtype=np.float32))
    adata.obsm["X_lat"] = np.random.default_rng(0).normal(size=(n, 3))
    assert ab.tl.umap(adata, "X_lat", n_neighbors=5) == ["X_lat_umap"]
    assert adata.obsm["X_lat_umap"].shape == (n, 2)
    assert np.isfinite(adata.obsm["X_lat_umap"]).all()
