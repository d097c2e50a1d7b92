"""Every plot rendered for real (Agg) from a model trained on real data, and its bad input."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import FAST, assert_unchanged, snapshot

import armed_bio as ab
from armed_bio.pl._counterfactuals import FE_ROW, OBSERVED_ROW


@pytest.fixture(scope="module")
def real():
    """ArmedRNA with a label head, trained briefly on the bundled CellBench data (5 batches)."""
    adata = ab.datasets.cellbench_lung5()
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = ab.model.ArmedRNA(adata, seed=0)
    model.train(max_epochs=12, **FAST)
    return model, adata


def _png(fig, path) -> int:
    fig.savefig(path)
    plt.close(fig)
    return path.stat().st_size


def test_counterfactual_heatmap_shows_model_outputs(real, tmp_path):
    model, adata = real
    cells = [adata.obs_names[0], adata.obs_names[400]]
    fig = ab.pl.counterfactuals(
        model, adata, cells=cells, n_genes=15, save=tmp_path / "c.png", return_fig=True
    )
    assert (tmp_path / "c.png").stat().st_size > 10_000
    heat = fig.axes[0]
    labels = [t.get_text() for t in heat.get_yticklabels()]
    batches = list(adata.obs["batch"].cat.categories)
    assert labels[:2] == [OBSERVED_ROW, FE_ROW]
    own = adata.obs["batch"].iloc[0]
    assert [lab.replace("  \u25c0", "") for lab in labels[2:]] == batches
    assert labels[2 + batches.index(own)].endswith("\u25c0")
    # The pixels are the model's counterfactuals of the most batch-affected genes.
    genes = list(model.get_gene_batch_variance().index[:15])
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == genes
    shown = heat.get_images()[0].get_array()
    expected = model.get_counterfactual_expression(
        adata, batch=batches[2], indices=[0], gene_list=genes
    )
    np.testing.assert_allclose(shown[2 + 2], np.log1p(expected.to_numpy()[0]), rtol=1e-5)
    plt.close(fig)


def test_gene_layout_places_each_gene_once(real, tmp_path):
    model, adata = real
    grid = ab.tl.gene_grid(adata, list(model.get_gene_batch_variance().index[:100]))
    assert not grid.duplicated(["row", "col"]).any()
    fig = ab.pl.gene_layout(model, adata, cells=[3], grid=grid, relative=True, return_fig=True)
    n_conditions = 2 + adata.obs["batch"].nunique()
    assert len(fig.axes) == n_conditions + 1  # panels + colour bar
    fe = fig.axes[1].get_images()[0].get_array()
    assert np.nanmax(np.abs(fe)) == 0  # relative to itself
    assert np.isnan(fe).sum() == grid_slots(grid) - len(grid)
    assert _png(fig, tmp_path / "g.png") > 5_000
    fig = ab.pl.gene_layout(model, adata, cells=[3], n_genes=64, return_fig=True)
    assert fig.axes[0].get_images()[0].get_array().count() == 64
    plt.close(fig)


def grid_slots(grid) -> int:
    rows, cols = ab.tl.grid_shape(len(grid))
    return rows * cols


def test_random_effects_plot_lists_most_affected_genes(real, tmp_path):
    model, _ = real
    fig = ab.pl.random_effects(model, n_genes=10, return_fig=True)
    right = fig.axes[1]
    assert [t.get_text() for t in right.get_yticklabels()] == list(
        model.get_gene_batch_variance().index[:10]
    )
    assert _png(fig, tmp_path / "r.png") > 10_000


def test_training_plot_draws_adversary_against_chance(real, tmp_path):
    model, _ = real
    fig = ab.pl.training(model, save=tmp_path / "t.png", return_fig=True)
    accuracy = [ax for ax in fig.axes if ax.get_title() == "accuracy"][0]
    chance = [line for line in accuracy.get_lines() if line.get_label().startswith("chance")]
    assert chance
    assert chance[0].get_ydata()[0] == pytest.approx(1 / 5)
    labels = [line.get_label() for line in accuracy.get_lines()]
    assert "adversary_accuracy" in labels
    assert "label_accuracy_me" in labels
    plt.close(fig)


def test_metrics_plot_from_cluster_scores(real, tmp_path):
    model, adata = real
    model.write_to_adata()
    ab.pp.log_pca(adata)
    table = ab.metrics.cluster_scores(adata, ["X_pca", "X_armed_fe"], "batch", "cell_type")
    fig = ab.pl.metrics(table, save=tmp_path / "m.png", return_fig=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["X_pca", "X_armed_fe"]
    assert "silhouette_batch \u2193" in [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    with pytest.raises(KeyError, match="lower_is_better"):
        ab.pl.metrics(table, lower_is_better=["iLISI"])
    with pytest.raises(ValueError, match="non-empty"):
        ab.pl.metrics(table.iloc[:0])


def test_plot_bad_input(real, sim):
    model, adata = real
    with pytest.raises(KeyError, match="not in adata.obs_names"):
        ab.pl.counterfactuals(model, adata, cells=["no_such_cell"])
    with pytest.raises(IndexError, match="out of range"):
        ab.pl.counterfactuals(model, adata, cells=[adata.n_obs])
    with pytest.raises(KeyError, match="not among the model's genes"):
        ab.pl.counterfactuals(model, adata, cells=[0], genes=["NOT_A_GENE"])
    with pytest.raises(TypeError, match="ArmedRNA"):
        ab.pl.counterfactuals(object(), adata, cells=[0])
    ab.model.ArmedRNA.setup_anndata(sim, batch_key="batch")
    fixed = ab.model.ArmedRNA(sim, mode="fixed", seed=0)
    with pytest.raises(ValueError, match="no training history"):
        ab.pl.training(fixed)
    fixed.train(max_epochs=1, **FAST)
    for plot in (ab.pl.random_effects, ab.pl.counterfactuals, ab.pl.gene_layout):
        with pytest.raises(ValueError, match="mode='fixed'"):
            plot(fixed)


def test_gene_grid_puts_correlated_genes_together():
    """Two gene programmes, each on in half of the cells: modules end up as two patches."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 400, 36
    module = np.repeat([0, 1], n_genes // 2)
    rng.shuffle(module)
    state = rng.integers(0, 2, n_cells)
    rate = np.where(module[None, :] == state[:, None], 20.0, 2.0)
    counts = rng.poisson(rate).astype(np.float32)
    adata = ab.datasets.simulate_counts(n_cells=n_cells, n_genes=n_genes, n_batches=2)
    adata.X = counts
    grid = ab.tl.gene_grid(adata)
    pos = grid[["row", "col"]].to_numpy()
    dist = np.abs(pos[:, None, :] - pos[None, :, :]).sum(-1)
    same = module[:, None] == module[None, :]
    off = ~np.eye(n_genes, dtype=bool)
    assert dist[same & off].mean() < 0.7 * dist[~same].mean()
    assert ab.tl.gene_grid(adata).equals(grid)  # deterministic
    with pytest.raises(KeyError, match="not in adata.var_names"):
        ab.tl.gene_grid(adata, ["gene_0", "nope", "gene_2", "gene_3"])
    with pytest.raises(ValueError, match="between 4"):
        ab.tl.gene_grid(adata, ["gene_0", "gene_1"])
    adata.X[:, 0] = 0.0  # never detected: no correlation defined
    with pytest.raises(ValueError, match="constant expression"):
        ab.tl.gene_grid(adata)


# ---------------------------------------------------------------- scanpy conventions
@pytest.fixture
def autoshow():
    """Set ``scanpy.settings.autoshow`` for one test, then restore it."""
    saved = sc.settings.autoshow
    yield lambda value: setattr(sc.settings, "autoshow", value)
    sc.settings.autoshow = saved


def test_show_and_return_fig_behave_as_in_scanpy(real, autoshow):
    model, _ = real
    fig = ab.pl.training(model, return_fig=True)
    assert isinstance(fig, plt.Figure)
    plt.close(fig)
    axes = ab.pl.training(model, show=False)
    assert all(isinstance(ax, plt.Axes) for ax in axes)
    plt.close("all")
    # show=None follows scanpy.settings.autoshow: shown (nothing returned), or the axes.
    autoshow(True)
    assert ab.pl.random_effects(model) is None
    autoshow(False)
    assert len(ab.pl.random_effects(model)) == 2
    plt.close("all")


def test_one_panel_plots_draw_into_the_given_axes(real):
    model, adata = real
    table = pd.DataFrame({"silhouette_batch": [0.3, 0.1]}, index=["X_pca", "X_armed_fe"])
    fig, (left, right) = plt.subplots(1, 2)
    assert ab.pl.metrics(table, ax=right, show=False) is right
    assert right.get_images()
    assert not left.get_images()
    view = adata[:200].copy()
    view.obsm["X_2d"] = np.random.default_rng(0).normal(size=(200, 2))
    assert ab.pl.embeddings(view, color="batch", obsm_keys=["X_2d"], ax=left, show=False) is left
    assert len(left.collections) == view.obs["batch"].nunique()
    with pytest.raises(ValueError, match="ax= draws one panel"):
        ab.pl.embeddings(view, color=["batch", "cell_type"], obsm_keys=["X_2d"], ax=left)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        ab.pl.metrics(table, ax="left")
    plt.close(fig)


def test_embeddings_asks_for_tl_umap_first(real):
    _, adata = real
    view = adata[:100].copy()
    view.obsm["X_5d"] = np.zeros((100, 5))
    before = snapshot(view)
    with pytest.raises(KeyError, match=r"armed_bio.tl.umap\(adata, \['X_5d'\]\)"):
        ab.pl.embeddings(view, color="batch", obsm_keys=["X_5d"])
    assert_unchanged(view, before)


def test_no_plot_writes_into_the_anndata(real):
    model, adata = real
    model.write_to_adata(adata)
    ab.tl.umap(adata, ["X_armed_fe", "X_armed_re"])
    before = snapshot(adata)
    cells = [0, adata.n_obs - 1]
    kw = {"show": False, "return_fig": True}
    figs = [
        ab.pl.embeddings(adata, color=["batch"], obsm_keys=["X_armed_fe", "X_armed_re"], **kw),
        ab.pl.counterfactuals(model, adata, cells=cells, **kw),
        ab.pl.gene_layout(model, adata, cells=cells, **kw),
        ab.pl.random_effects(model, **kw),
        ab.pl.training(model, **kw),
    ]
    assert all(isinstance(f, plt.Figure) for f in figs)
    assert_unchanged(adata, before)
    plt.close("all")
