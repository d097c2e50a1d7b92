"""The DE simulator: its truth, its null and its unequal design are what it says."""

from __future__ import annotations

import numpy as np

import armed_bio as ab


def test_the_truth_columns_and_the_design():
    adata = ab.datasets.simulate_de_counts(n_donors=4, n_cells_per_donor=200, n_genes=100)
    assert adata.shape == (800, 100)
    assert adata.var["is_de"].sum() == 10
    assert adata.var["donor_specific"].sum() == 5
    assert not (adata.var["is_de"] & adata.var["donor_specific"]).any()
    assert set(np.abs(adata.var.loc[adata.var["is_de"], "true_lfc"])) == {1.0}
    stim = adata.obs.groupby("donor", observed=True)["condition"].apply(
        lambda c: (c == "stim").mean()
    )
    assert stim.max() - stim.min() > 0.3  # each donor its own stim fraction
    x = adata.X.toarray()
    assert (x == np.round(x)).all()
    assert (x >= 0).all()


def test_de_genes_change_between_conditions_and_the_null_has_none():
    adata = ab.datasets.simulate_de_counts(n_donors=4, n_cells_per_donor=300, n_genes=100, seed=2)
    x = adata.X.toarray()
    x = x / x.sum(1, keepdims=True)
    stim = (adata.obs["condition"] == "stim").to_numpy()
    lfc = np.log2(x[stim].mean(0) + 1e-6) - np.log2(x[~stim].mean(0) + 1e-6)
    de = adata.var["is_de"].to_numpy()
    true = adata.var["true_lfc"].to_numpy()
    assert (np.sign(lfc[de]) == np.sign(true[de])).mean() > 0.9
    assert np.abs(lfc[de]).mean() > 3 * np.abs(lfc[~de]).mean()
    null = ab.datasets.simulate_de_counts(
        n_genes=50, de_fraction=0.0, donor_specific_fraction=0.0, seed=2
    )
    assert not null.var["is_de"].any()
    assert not null.var["donor_specific"].any()


def test_the_same_seed_gives_the_same_counts():
    a = ab.datasets.simulate_de_counts(n_donors=3, n_cells_per_donor=50, n_genes=30, seed=5)
    b = ab.datasets.simulate_de_counts(n_donors=3, n_cells_per_donor=50, n_genes=30, seed=5)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
