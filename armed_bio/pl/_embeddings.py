"""Uncorrected vs fixed-effects vs random-effects embeddings, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes

from .._constants import UMAP_SUFFIX
from .._validation import check_anndata, check_obs_keys, check_obsm_keys
from ._utils import category_colors, finish, one_panel

_TITLES = {
    "X_pca": "uncorrected (PCA)",
    "X_armed_fe": "ARMED fixed effects",
    "X_armed_re": "ARMED random effects",
}


def layout_of(adata: AnnData, obsm_key: str) -> np.ndarray:
    """The 2-D layout drawn for one embedding: its UMAP, or the embedding itself if 2-D."""
    umap_key = obsm_key + UMAP_SUFFIX
    if umap_key in adata.obsm:
        return np.asarray(adata.obsm[umap_key])
    values = np.asarray(adata.obsm[obsm_key])
    if values.ndim == 2 and values.shape[1] == 2:
        return values
    raise KeyError(
        f"adata.obsm has no {umap_key!r} to draw {obsm_key!r} with. Compute it first with "
        f"`armed_bio.tl.umap(adata, [{obsm_key!r}])` (plots do not write into the AnnData), "
        "or pass a 2-D embedding such as scanpy's 'X_umap'."
    )


def embeddings(
    adata: AnnData,
    color: Sequence[str],
    obsm_keys: Sequence[str] = ("X_pca", "X_armed_fe", "X_armed_re"),
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """UMAPs of several embeddings (columns) coloured by each ``color`` key (rows).

    Each embedding is drawn from its UMAP in ``.obsm["<key>_umap"]``, computed beforehand by
    :func:`armed_bio.tl.umap` (a 2-D embedding such as scanpy's ``X_umap`` is drawn as it is).
    The AnnData is not written to.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``.obsm``.
    color
        ``adata.obs`` columns, one row of panels each (e.g. ``["batch", "cell_type"]``).
    obsm_keys
        Embeddings, one column each.
    ax
        Axes to draw on, for one embedding and one ``color`` key.
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).
    """
    check_anndata(adata)
    color = [color] if isinstance(color, str) else list(color)
    obsm_keys = check_obsm_keys(adata, obsm_keys)
    check_obs_keys(adata, color, what="color keys")
    layouts = [layout_of(adata, key) for key in obsm_keys]
    if ax is not None:
        if len(color) * len(obsm_keys) != 1:
            raise ValueError(
                f"ax= draws one panel, but {len(obsm_keys)} embeddings x {len(color)} color keys "
                "were asked for; pass one of each, or leave ax=None for a grid."
            )
        fig, ax, _ = one_panel(ax, (4.2, 3.8))
        axes = np.array([[ax]])
    else:
        fig, axes = plt.subplots(
            len(color),
            len(obsm_keys),
            figsize=(4.2 * len(obsm_keys), 3.8 * len(color)),
            squeeze=False,
        )
    for j, (key, xy) in enumerate(zip(obsm_keys, layouts, strict=True)):
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
    return finish(
        fig, axes[0, 0] if ax is not None else axes, show, save, return_fig, tight=ax is None
    )
