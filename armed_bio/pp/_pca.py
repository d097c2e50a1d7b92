"""The uncorrected reference embedding: PCA of log-normalised counts."""

from __future__ import annotations

import scanpy as sc
from anndata import AnnData

from .._constants import NORMALISATION_TARGET
from .._validation import check_anndata, check_likelihood, get_matrix, matrix_name


def log_pca(
    adata: AnnData,
    n_comps: int = 30,
    layer: str | None = None,
    key_added: str = "X_pca",
    target_sum: float = NORMALISATION_TARGET,
    seed: int = 0,
) -> None:
    """PCA of library-normalised, log1p counts, written to ``adata.obsm[key_added]``.

    The counts themselves are not changed (the normalisation runs on a copy), so the
    AnnData stays ready for :class:`~armed_bio.model.ArmedRNA`. This is the "uncorrected"
    embedding the ARMED latents are compared against, and the pre-integration embedding
    of :func:`armed_bio.metrics.scib`.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``).
    n_comps
        Number of principal components (at most ``min(n_cells, n_genes) - 1``).
    layer
        Layer holding the counts; ``None``: ``adata.X``.
    key_added
        ``adata.obsm`` key of the result.
    target_sum
        Counts per cell after library normalisation.
    seed
        Seed of the (randomised) PCA solver.
    """
    check_anndata(adata)
    counts = get_matrix(adata, layer)
    check_likelihood(counts, "nb", matrix_name(layer))
    n_max = min(adata.n_obs, adata.n_vars) - 1
    if not 1 <= n_comps <= n_max:
        raise ValueError(
            f"n_comps={n_comps} is out of range for {adata.n_obs} cells x {adata.n_vars} genes; "
            f"use 1 <= n_comps <= {n_max}."
        )
    tmp = AnnData(counts.copy())
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    adata.obsm[key_added] = tmp.obsm["X_pca"]
