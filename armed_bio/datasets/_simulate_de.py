"""Simulated counts with known differential expression, donor effects and unequal designs.

The benchmark of :meth:`armed_bio.model.ArmedRNA.differential_expression`: a condition
(``ctrl``/``stim``) within donors, where the donors differ in their per-gene expression (the
batch effect), in their fraction of stimulated cells and in their cell-type mix, so that
cell-level tests meet pseudoreplication and confounding as they do on real data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def simulate_de_counts(
    n_donors: int = 6,
    n_cells_per_donor: int = 500,
    n_genes: int = 500,
    n_cell_types: int = 3,
    de_fraction: float = 0.1,
    de_lfc: float = 1.0,
    donor_specific_fraction: float = 0.05,
    donor_effect_sd: float = 0.3,
    library_size: float = 2000.0,
    theta: float = 10.0,
    seed: int = 0,
) -> AnnData:
    """Counts of a condition within donors with known DE genes.

    ``log rho = base + type[t] + donor[d] + condition[c] + response[d, c]`` (normalised over
    genes), ``counts ~ NB(library * rho, theta)``.

    - Cell types: 20 % of genes are markers of each type (log-scale s.d. 1); each donor has its
      own cell-type mix (Dirichlet, concentration 2).
    - Donors: every gene shifts by ``N(0, donor_effect_sd^2)`` per donor (on the log scale),
      and each donor has its own fraction of ``stim`` cells (evenly spread from 0.2 to 0.8).
    - DE genes (``var["is_de"]``): a fraction ``de_fraction`` of genes change by
      ``+-de_lfc`` (log2) in ``stim`` cells of every donor and cell type.
    - Donor-specific genes (``var["donor_specific"]``, not DE): a fraction
      ``donor_specific_fraction`` of the other genes change by ``+-1.5 de_lfc`` in the
      ``stim`` cells of one donor only.

    ``de_fraction=0, donor_specific_fraction=0`` gives the null: donor effects, no condition
    effect.

    Returns
    -------
    AnnData of raw counts (CSR) with ``obs`` columns ``donor``, ``condition``, ``cell_type``
    and ``var`` columns ``is_de``, ``true_lfc`` (log2, DE genes), ``donor_specific``.
    """
    rng = np.random.default_rng(seed)
    base = np.maximum(rng.normal(0.0, 1.5, n_genes), -3.0)
    types = rng.normal(0.0, 1.0, (n_cell_types, n_genes)) * (
        rng.random((n_cell_types, n_genes)) < 0.2
    )
    donors = rng.normal(0.0, donor_effect_sd, (n_donors, n_genes))
    order = rng.permutation(n_genes)
    n_de = int(round(de_fraction * n_genes))
    n_specific = int(round(donor_specific_fraction * n_genes))
    de_genes, specific_genes = order[:n_de], order[n_de : n_de + n_specific]
    signs = rng.choice([-1.0, 1.0], size=n_genes)
    true_lfc = np.zeros(n_genes)
    true_lfc[de_genes] = de_lfc * signs[de_genes]
    response = np.zeros((n_donors, n_genes))
    responder = rng.integers(n_donors, size=n_specific)
    response[responder, specific_genes] = 1.5 * de_lfc * signs[specific_genes]
    stim_fraction = rng.permutation(np.linspace(0.2, 0.8, n_donors))
    mixes = rng.dirichlet(np.full(n_cell_types, 2.0), size=n_donors)

    blocks, obs = [], []
    for d in range(n_donors):
        n = n_cells_per_donor
        stim = rng.random(n) < stim_fraction[d]
        cell_type = rng.choice(n_cell_types, size=n, p=mixes[d])
        log_rate = (
            base
            + types[cell_type]
            + donors[d]
            + stim[:, None] * np.log(2.0) * (true_lfc + response[d])
        )
        rho = np.exp(log_rate - log_rate.max(1, keepdims=True))
        rho /= rho.sum(1, keepdims=True)
        mu = rho * np.exp(rng.normal(np.log(library_size), 0.3, n))[:, None]
        counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
        blocks.append(sparse.csr_matrix(counts))
        obs.append(
            pd.DataFrame(
                {
                    "donor": f"donor_{d}",
                    "condition": np.where(stim, "stim", "ctrl"),
                    "cell_type": [f"type_{t}" for t in cell_type],
                }
            )
        )
    obs = pd.concat(obs, ignore_index=True)
    obs.index = [f"cell_{i}" for i in range(len(obs))]
    for column in obs:
        obs[column] = pd.Categorical(obs[column])
    is_specific = np.zeros(n_genes, dtype=bool)
    is_specific[specific_genes] = True
    var = pd.DataFrame(
        {"is_de": true_lfc != 0, "true_lfc": true_lfc, "donor_specific": is_specific},
        index=[f"gene_{g}" for g in range(n_genes)],
    )
    adata = AnnData(X=sparse.vstack(blocks, format="csr"), obs=obs, var=var)
    adata.uns["simulate_de"] = {
        "stim_fraction": stim_fraction,
        "n_de": n_de,
        "n_donor_specific": n_specific,
        "seed": seed,
    }
    return adata
