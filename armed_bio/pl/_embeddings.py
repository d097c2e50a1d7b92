"""Uncorrected vs fixed-effects vs random-effects embeddings, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.figure import Figure

from .._validation import check_anndata, check_obs_keys, check_obsm_keys
from ._utils import category_colors, finish

_TITLES = {
    "X_pca": "uncorrected (PCA)",
    "X_armed_fe": "ARMED fixed effects",
    "X_armed_re": "ARMED random effects",
}


def umap_of(adata: AnnData, obsm_key: str, seed: int = 0) -> np.ndarray:
    """2-D UMAP of one embedding, cached in ``adata.obsm[f"{obsm_key}_umap"]``."""
    cache = f"{obsm_key}_umap"
    if cache not in adata.obsm:
        tmp = AnnData(obs=adata.obs[[]].copy(), obsm={"rep": np.asarray(adata.obsm[obsm_key])})
        sc.pp.neighbors(tmp, use_rep="rep", random_state=seed)
        sc.tl.umap(tmp, random_state=seed)
        adata.obsm[cache] = tmp.obsm["X_umap"]
    return adata.obsm[cache]


def embeddings(
    adata: AnnData,
    color: Sequence[str],
    obsm_keys: Sequence[str] = ("X_pca", "X_armed_fe", "X_armed_re"),
    seed: int = 0,
    show: bool = False,
    save: str | Path | None = None,
) -> Figure:
    """UMAPs of several embeddings (columns) coloured by each ``color`` key (rows).

    Neighbours and UMAP are computed when missing and cached as ``.obsm["<key>_umap"]``.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``.obsm``.
    color
        ``adata.obs`` columns, one row of panels each (e.g. ``["batch", "cell_type"]``).
    obsm_keys
        Embeddings, one column each.
    seed
        Seed of neighbours/UMAP.
    show
        Call ``plt.show()``.
    save
        Path to save the figure to.
    """
    check_anndata(adata)
    color = [color] if isinstance(color, str) else list(color)
    obsm_keys = check_obsm_keys(adata, obsm_keys)
    check_obs_keys(adata, color, what="color keys")
    fig, axes = plt.subplots(
        len(color),
        len(obsm_keys),
        figsize=(4.2 * len(obsm_keys), 3.8 * len(color)),
        squeeze=False,
    )
    for j, key in enumerate(obsm_keys):
        xy = umap_of(adata, key, seed)
        for i, col in enumerate(color):
            ax = axes[i, j]
            cats = adata.obs[col].astype("category")
            colors = category_colors(len(cats.cat.categories))
            for k, cat in enumerate(cats.cat.categories):
                mask = (cats == cat).to_numpy()
                ax.scatter(
                    xy[mask, 0], xy[mask, 1], s=4, color=colors[k], label=str(cat), rasterized=True
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_TITLES.get(key, key))
            if j == 0:
                ax.set_ylabel(col)
            if j == len(obsm_keys) - 1:
                ax.legend(
                    loc="center left",
                    bbox_to_anchor=(1.0, 0.5),
                    fontsize=7,
                    markerscale=2.5,
                    frameon=False,
                )
    return finish(fig, show, save)
