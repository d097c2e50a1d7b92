"""UMAPs of several embeddings at once, for plotting them side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scanpy as sc
from anndata import AnnData

from .._constants import UMAP_SUFFIX
from .._validation import check_anndata, check_obsm_keys


def umap(
    adata: AnnData,
    obsm_keys: Sequence[str] | str = ("X_pca", "X_armed_fe", "X_armed_re"),
    *,
    n_neighbors: int = 15,
    seed: int = 0,
) -> list[str]:
    """Compute a 2-D UMAP of each embedding in ``obsm_keys``.

    Each embedding gets its own neighbour graph (scanpy's ``pp.neighbors`` and ``tl.umap`` on
    a throw-away AnnData), so the graphs in ``adata.obsp`` and ``adata.uns`` are left alone.
    Neighbours are exact (scikit-learn), so the layout depends only on ``seed``; scanpy's
    default for more than 8,192 cells, pynndescent, is approximate, and pynndescent 0.7 with
    scanpy 1.11 fails there (``'csr_array' object has no attribute 'getnnz'``).

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``.obsm``.
    obsm_keys
        Embeddings to lay out, e.g. ``["X_pca", "X_armed_fe", "X_armed_re"]``.
    n_neighbors
        Neighbours per cell in each graph.
    seed
        Seed of neighbours and UMAP.

    Returns
    -------
    The keys written: ``adata.obsm["<key>_umap"]`` for each key, read by
    :func:`armed_bio.pl.embeddings`.
    """
    check_anndata(adata)
    keys = check_obsm_keys(adata, obsm_keys)
    if not isinstance(n_neighbors, int) or isinstance(n_neighbors, bool) or n_neighbors < 2:
        raise ValueError(f"umap: n_neighbors must be an integer >= 2, got {n_neighbors!r}.")
    layouts = {}
    for key in keys:
        tmp = AnnData(obs=adata.obs[[]].copy(), obsm={"rep": np.asarray(adata.obsm[key])})
        sc.pp.neighbors(
            tmp,
            use_rep="rep",
            n_neighbors=n_neighbors,
            transformer="sklearn",
            random_state=seed,
        )
        sc.tl.umap(tmp, random_state=seed)
        layouts[key + UMAP_SUFFIX] = tmp.obsm["X_umap"]
    adata.obsm.update(layouts)
    return list(layouts)
