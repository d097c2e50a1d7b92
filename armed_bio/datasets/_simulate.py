"""Simulated counts with known batch effects, for tests and counterfactual checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def simulate_counts(
    n_cells: int = 1000,
    n_genes: int = 200,
    n_batches: int = 3,
    n_cell_types: int = 4,
    batch_effect_sd: float = 0.5,
    cell_type_effect_sd: float = 1.5,
    marker_fraction: float = 0.2,
    library_size: float = 2000.0,
    theta: float = 10.0,
    seed: int = 0,
) -> AnnData:
    """Negative-binomial counts of cell types under per-batch, per-gene multiplicative effects.

    ``log rho = base + type_effect[type] + batch_effect[batch]`` (then normalised over genes),
    ``mu = library * rho``, ``counts ~ NB(mu, theta)`` (gamma-Poisson).

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_cell_types
        Sizes.
    batch_effect_sd
        S.d. of the per-batch per-gene log fold changes (the random effect).
    cell_type_effect_sd
        S.d. of the cell-type log fold changes on each type's marker genes.
    marker_fraction
        Fraction of genes that are markers of each cell type.
    library_size
        Median total counts per cell (log-normal, s.d. 0.3 on the log scale).
    theta
        NB inverse dispersion.
    seed
        Random seed.

    Returns
    -------
    AnnData with raw counts in ``.X`` (CSR), ``obs["batch"]``, ``obs["cell_type"]``,
    ``obs["library"]``; the truth in ``varm["true_log_profile"]`` (genes x cell types, log of
    the batch-free normalised expression) and ``varm["true_batch_effect"]`` (genes x batches,
    log fold changes, centred over batches so that the batch-free expression is their mean).
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, n_genes)
    type_effect = np.zeros((n_cell_types, n_genes))
    for t in range(n_cell_types):
        markers = rng.random(n_genes) < marker_fraction
        type_effect[t, markers] = rng.normal(0.0, cell_type_effect_sd, markers.sum())
    batch_effect = rng.normal(0.0, batch_effect_sd, (n_batches, n_genes))
    batch_effect -= batch_effect.mean(axis=0, keepdims=True)

    cell_type = rng.integers(0, n_cell_types, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    library = np.exp(rng.normal(np.log(library_size), 0.3, n_cells))

    log_profile = base + type_effect
    log_profile -= np.log(np.exp(log_profile).sum(axis=1, keepdims=True))
    logits = log_profile[cell_type] + batch_effect[batch]
    rho = np.exp(logits - logits.max(axis=1, keepdims=True))
    rho /= rho.sum(axis=1, keepdims=True)
    mu = library[:, None] * rho
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(
                [f"batch_{b}" for b in batch], categories=[f"batch_{b}" for b in range(n_batches)]
            ),
            "cell_type": pd.Categorical(
                [f"type_{t}" for t in cell_type],
                categories=[f"type_{t}" for t in range(n_cell_types)],
            ),
            "library": library,
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    adata = AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    adata.varm["true_log_profile"] = log_profile.T
    adata.varm["true_batch_effect"] = batch_effect.T
    return adata
