"""ArmedRNA.differential_expression: both tests, scanpy's layout, plots and bad input."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from conftest import FAST, assert_unchanged, snapshot
from matplotlib.figure import Figure

import armed_bio as ab
from armed_bio.model._replicate_test import benjamini_hochberg, random_effects_test


@pytest.fixture(scope="module")
def de_model():
    """ArmedRNA on a small condition-within-donors simulation with known DE genes."""
    adata = ab.datasets.simulate_de_counts(
        n_donors=4, n_cells_per_donor=150, n_genes=80, de_fraction=0.2, seed=1
    )
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="donor")
    model = ab.model.ArmedRNA(adata, seed=0)
    model.train(max_epochs=150, **FAST)
    return model


def test_one_vs_one_at_the_cell_level_returns_scvis_table(de_model):
    adata = de_model.adata
    before = snapshot(adata)
    table = de_model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", silent=True
    )
    assert_unchanged(adata, before)  # nothing written without key_added
    assert len(table) == adata.n_vars
    for column in (
        "proba_de", "bayes_factor", "lfc_mean", "lfc_std", "scale1", "scale2",
        "raw_mean1", "non_zeros_proportion2", "is_de_fdr_0.05", "comparison",
    ):  # fmt: skip
        assert column in table.columns, column
    assert (table["comparison"] == "stim vs ctrl").all()
    # The known DE genes have larger changes than the rest, in the right direction.
    truth = adata.var.loc[table.index]
    de = truth["is_de"].to_numpy()
    assert table["proba_de"][de].mean() > table["proba_de"][~de].mean()
    agree = np.sign(table["lfc_mean"][de]) == np.sign(truth["true_lfc"][de])
    assert agree.mean() > 0.8
    again = de_model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", silent=True
    )
    pd.testing.assert_frame_equal(table, again)  # same seed, same result


def test_the_replicate_test_uses_donors_as_replicates(de_model):
    table = de_model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", replicate_key="donor", silent=True
    )
    assert (table["n_replicates"] == 4).all()
    for column in ("tau", "pvalue", "pvalue_adj", "lfc_min", "lfc_max"):
        assert column in table.columns
    de = de_model.adata.var.loc[table.index, "is_de"].to_numpy()
    assert np.median(table["pvalue"][de]) < np.median(table["pvalue"][~de])
    assert (table["pvalue_adj"] >= table["pvalue"] - 1e-12).all()


def test_one_vs_rest_and_as_a_batch(de_model):
    table = de_model.differential_expression(groupby="cell_type", silent=True)
    assert set(table["group2"]) == {"rest"}
    assert set(table["group1"]) == set(de_model.adata.obs["cell_type"].astype(str))
    assert len(table) == 3 * de_model.adata.n_vars
    as_batch = de_model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", batch="donor_1", silent=True
    )
    free = de_model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", silent=True
    )
    assert not np.allclose(as_batch.loc[free.index, "scale1"], free["scale1"])


def test_results_go_to_uns_in_scanpys_layout_and_scanpy_reads_them(de_model):
    adata = de_model.adata.copy()
    de_model.differential_expression(
        adata, groupby="cell_type", replicate_key="donor", key_added="armed_de", silent=True
    )
    record = adata.uns["armed_de"]
    assert record["params"]["groupby"] == "cell_type"
    frame = sc.get.rank_genes_groups_df(adata, group="type_0", key="armed_de")
    assert list(frame.columns[:5]) == ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
    assert frame["scores"].is_monotonic_decreasing
    sc.pl.rank_genes_groups(adata, key="armed_de", n_genes=5, show=False)
    plt.close("all")


def test_the_plot_draws_volcanoes_and_a_heatmap(de_model, tmp_path):
    table = de_model.differential_expression(
        groupby="cell_type", replicate_key="donor", silent=True
    )
    fig = ab.pl.differential_expression(table, n_genes=3, save=tmp_path / "de.png", return_fig=True)
    assert isinstance(fig, Figure)
    assert (tmp_path / "de.png").stat().st_size > 0
    titles = [ax.get_title() for ax in fig.axes]
    assert any("type_0 vs rest" in t for t in titles)
    assert any("top genes" in t for t in titles)
    plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "groupby is required"),
        ({"groupby": "tissue"}, KeyError, "groupby 'tissue' is not a column of adata.obs"),
        ({"groupby": "condition", "group1": "treated"}, KeyError, "group 'treated' is not in"),
        ({"groupby": "condition", "min_cells": 10_000}, ValueError, "has .* cells; differential"),
        ({"groupby": "condition", "replicate_key": "site"}, KeyError, "replicate_key 'site'"),
        ({"groupby": "condition", "batch": "donor_9"}, ValueError, "not a batch the model knows"),
        ({"groupby": "condition", "delta": -1}, ValueError, "delta must be non-negative"),
        ({"groupby": "condition", "fdr_target": 5}, ValueError, "fdr_target must be a number"),
        (
            {"groupby": "condition", "replicate_key": "donor", "min_cells_per_replicate": 10_000},
            ValueError,
            "needs at least 2 replicates",
        ),
    ],
)
def test_bad_input_is_named_and_leaves_the_anndata_alone(de_model, kwargs, error, match):
    before = snapshot(de_model.adata)
    with pytest.raises(error, match=match):
        de_model.differential_expression(silent=True, **kwargs)
    assert_unchanged(de_model.adata, before)


def test_a_fixed_effects_model_cannot_answer_as_batch_k():
    adata = ab.datasets.simulate_de_counts(n_donors=3, n_cells_per_donor=60, n_genes=30)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="donor")
    model = ab.model.ArmedRNA(adata, mode="fixed", seed=0)
    model.train(max_epochs=2, **FAST)
    before = snapshot(adata)
    with pytest.raises(ValueError, match="mode='fixed'"):
        model.differential_expression(groupby="condition", batch="donor_0", silent=True)
    assert_unchanged(adata, before)
    # Batch-free DE works for it: its decoder has no batch at all.
    table = model.differential_expression(groupby="condition", group1="stim", silent=True)
    assert len(table) == 30


def test_the_random_effects_test_widens_for_one_donor_changes():
    # Six donors: a gene changing by 1 in every donor, and one changing by 6 in one donor only
    # (the same mean change); sampling variance small in both.
    lfc = np.array([[1.0, 6.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    lfc = lfc + np.random.default_rng(0).normal(0, 0.05, lfc.shape)
    result = random_effects_test(lfc, np.full(lfc.shape, 0.01), delta=0.25)
    np.testing.assert_allclose(result["lfc_mean"], lfc.mean(0), atol=0.02)
    assert result["pvalue"][0] < 1e-4  # consistent: called
    assert result["pvalue"][1] > 0.05  # one donor only: not called
    assert result["tau"][1] > 1.0 > result["tau"][0]


def test_benjamini_hochberg_matches_scipy():
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(0).random(200) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p))
    np.testing.assert_allclose(
        benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.2])), [0.04, 0.16 / 3, 0.16 / 3, 0.2]
    )


def test_replicate_expression_choices_and_the_nesting_check(de_model):
    compare = {"groupby": "condition", "group1": "stim", "group2": "ctrl", "silent": True}
    own = de_model.differential_expression(replicate_key="donor", **compare)
    free = de_model.differential_expression(
        replicate_key="donor", replicate_expression="batch_free", **compare
    )
    assert not np.allclose(own.loc[free.index, "lfc_mean"], free["lfc_mean"])
    # Own-batch decoding keeps donor-to-donor differences that Z = 0 averages away.
    assert own["tau"].mean() > free["tau"].mean()
    adata = de_model.adata.copy()
    adata.obs["pair"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")  # spans every donor
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"span several batches .*replicate_expression='batch_"):
        de_model.differential_expression(adata, replicate_key="pair", **compare)
    with pytest.raises(ValueError, match="replicate_expression must be 'own_batch' or"):
        de_model.differential_expression(
            adata, replicate_key="donor", replicate_expression="raw", **compare
        )
    assert_unchanged(adata, before)
