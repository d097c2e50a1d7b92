"""The same cell in every batch: counterfactual heatmaps and gene-layout images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from .._validation import check_anndata, get_matrix
from ..pp._normalise import log_normalised
from ..tl import gene_grid, grid_shape
from ._utils import cell_positions, finish, quiet_routes

FE_ROW = "batch-free (FE)"
OBSERVED_ROW = "observed"


def _require_counterfactual_model(model) -> None:
    if not hasattr(model, "get_counterfactual_expression"):
        raise TypeError(
            f"{type(model).__name__} has no get_counterfactual_expression; pass a trained "
            "armed_bio.model.ArmedRNA."
        )
    model._require_random_effects("Counterfactual plots")


def _top_genes(model, genes: Sequence[str] | None, n_genes: int) -> list[str]:
    if genes is not None:
        if isinstance(genes, str):
            raise TypeError(f"genes must be a list of gene names, not {genes!r}.")
        return list(genes)
    return list(model.get_gene_batch_variance().index[:n_genes])


def condition_profiles(
    model, adata: AnnData, positions: np.ndarray, genes: list[str]
) -> dict[str, pd.DataFrame]:
    """Log1p expression per 10k of the cells: observed, batch-free, and in each batch.

    Returns one ``cells x genes`` DataFrame per condition, in the order observed, FE, then
    the model's batches.
    """
    layer = model.registry_["setup_args"].get("layer")
    observed = log_normalised(get_matrix(adata, layer)[positions])
    gene_pos = pd.Index(adata.var_names).get_indexer(genes)
    names = adata.obs_names[positions]
    profiles = {OBSERVED_ROW: pd.DataFrame(observed[:, gene_pos], index=names, columns=genes)}
    with quiet_routes():
        for batch in [None, *model.batch_categories_]:
            expr = model.get_counterfactual_expression(
                adata, batch=batch, indices=positions, gene_list=genes
            )
            profiles[FE_ROW if batch is None else str(batch)] = np.log1p(expr)
    return profiles


def _cell_title(adata: AnnData, model, position: int) -> str:
    batch_key = model.registry_["setup_args"].get("batch_key")
    labels_key = model.registry_["setup_args"].get("labels_key")
    parts = [str(adata.obs_names[position])]
    for key in (batch_key, labels_key):
        if key is not None and key in adata.obs:
            parts.append(str(adata.obs[key].iloc[position]))
    return " | ".join(parts)


def counterfactuals(
    model,
    adata: AnnData | None = None,
    cells: Sequence | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 25,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Heatmaps of chosen cells as measured, batch-free, and as if in each batch.

    One panel per cell: rows are the observed expression, the batch-free (fixed-effects,
    ``Z = 0``) expression and the expression decoded with each batch's random effects;
    columns are genes (default: the ``n_genes`` most batch-affected, by the inter-batch
    variance of the output offset). Values are log1p expression per 10k; the cell's own
    batch is marked with an arrow.

    Parameters
    ----------
    model
        A trained :class:`~armed_bio.model.ArmedRNA` with random effects.
    adata
        AnnData with the model's genes (default: the training data).
    cells
        Obs names or integer positions of the cells to show (default: the first cell).
    genes
        Genes to show (default: the most batch-affected ``n_genes``).
    n_genes
        Number of most batch-affected genes when ``genes`` is None.
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).
    """
    _require_counterfactual_model(model)
    adata = model.adata if adata is None else check_anndata(adata)
    positions = cell_positions(adata, [0] if cells is None else cells)
    genes = _top_genes(model, genes, n_genes)
    profiles = condition_profiles(model, adata, positions, genes)
    rows = list(profiles)
    batch_key = model.registry_["setup_args"].get("batch_key")
    vmax = max(float(p.to_numpy().max()) for p in profiles.values())
    fig, axes = plt.subplots(
        len(positions),
        1,
        squeeze=False,
        figsize=(max(6.0, 0.28 * len(genes) + 3), (0.32 * len(rows) + 1.1) * len(positions)),
    )
    image = None
    for i, pos in enumerate(positions):
        ax = axes[i, 0]
        values = np.stack([profiles[r].to_numpy()[i] for r in rows])
        image = ax.imshow(
            values, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest"
        )
        own = str(adata.obs[batch_key].iloc[pos]) if batch_key in adata.obs else None
        ax.set_yticks(
            range(len(rows)), [f"{r}  \u25c0" if r == own else r for r in rows], fontsize=8
        )
        ax.axhline(1.5, color="white", lw=1.5)
        ax.set_title(_cell_title(adata, model, pos), fontsize=9, loc="left")
        if i == len(positions) - 1:
            ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=7)
        else:
            ax.set_xticks([])
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="log1p expression per 10k")
    return finish(fig, axes, show, save, return_fig, tight=False)


def gene_layout(
    model,
    adata: AnnData | None = None,
    cells: Sequence | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 400,
    grid: pd.DataFrame | None = None,
    relative: bool = False,
    seed: int = 0,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Show "the same cell in every batch" as images: each gene a pixel, correlated genes adjacent.

    Genes are placed on a grid by :func:`armed_bio.tl.gene_grid` (correlation -> 2-D MDS ->
    linear assignment to grid slots), so gene programmes show up as patches. One row per
    cell; columns: observed, batch-free (FE) and each batch.

    Parameters
    ----------
    model
        A trained :class:`~armed_bio.model.ArmedRNA` with random effects.
    adata
        AnnData with the model's genes and raw counts (default: the training data).
    cells
        Obs names or integer positions (default: the first cell).
    genes
        Genes to lay out (default: the ``n_genes`` most batch-affected).
    n_genes
        Number of genes when ``genes`` is None.
    grid
        A precomputed :func:`~armed_bio.tl.gene_grid` result (reuse it across figures).
    relative
        Show each condition's log fold change against the batch-free expression (diverging
        colours) instead of log1p expression.
    seed
        Seed of the cell subsample of :func:`~armed_bio.tl.gene_grid`.
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).
    """
    _require_counterfactual_model(model)
    adata = model.adata if adata is None else check_anndata(adata)
    positions = cell_positions(adata, [0] if cells is None else cells)
    if grid is None:
        layer = model.registry_["setup_args"].get("layer")
        genes = _top_genes(model, genes, min(n_genes, adata.n_vars))
        grid = gene_grid(adata, genes, layer=layer, seed=seed)
    genes = list(grid.index)
    profiles = condition_profiles(model, adata, positions, genes)
    rows, cols = grid_shape(len(genes)) if len(grid) else (0, 0)
    rows, cols = max(rows, int(grid["row"].max()) + 1), max(cols, int(grid["col"].max()) + 1)
    conditions = list(profiles)
    fig, axes = plt.subplots(
        len(positions),
        len(conditions),
        squeeze=False,
        figsize=(1.9 * len(conditions) + 1.0, 2.0 * len(positions) + 0.4),
    )
    fe = {i: profiles[FE_ROW].to_numpy()[i] for i in range(len(positions))}
    batch_key = model.registry_["setup_args"].get("batch_key")
    image = None
    for i, pos in enumerate(positions):
        own = str(adata.obs[batch_key].iloc[pos]) if batch_key in adata.obs else None
        for j, cond in enumerate(conditions):
            values = profiles[cond].to_numpy()[i]
            if relative:
                values = (values - fe[i]) / np.log(2)
            canvas = np.full((rows, cols), np.nan)
            canvas[grid["row"].to_numpy(), grid["col"].to_numpy()] = values
            ax = axes[i, j]
            if relative:
                image = ax.imshow(canvas, cmap="RdBu_r", vmin=-2, vmax=2, interpolation="nearest")
            else:
                vmax = max(float(p.to_numpy()[i].max()) for p in profiles.values())
                image = ax.imshow(canvas, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{cond} \u25c0" if cond == own else cond, fontsize=8)
            if j == 0:
                ax.set_ylabel(_cell_title(adata, model, pos).replace(" | ", "\n"), fontsize=7)
    label = "log2 FC vs batch-free" if relative else "log1p expression per 10k"
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.7, label=label)
    return finish(fig, axes, show, save, return_fig, tight=False)
