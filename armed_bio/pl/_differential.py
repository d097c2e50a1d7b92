"""Differential expression results: a volcano per comparison and a heatmap of the top genes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ._utils import finish

REQUIRED = {"lfc_mean", "group1", "group2", "comparison", "scale1", "scale2", "proba_de"}


def _significance(part: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The volcano's y: -log10 p at the replicate level, the Bayes factor at the cell level."""
    if "pvalue" in part:
        return -np.log10(np.clip(part["pvalue"].to_numpy(), 1e-300, 1)), "-log10 p"
    return part["bayes_factor"].to_numpy(), "Bayes factor (log)"


def _called(part: pd.DataFrame) -> np.ndarray:
    column = next((c for c in part.columns if c.startswith("is_de_fdr_")), None)
    return np.zeros(len(part), bool) if column is None else part[column].to_numpy(bool)


def differential_expression(
    results: pd.DataFrame,
    n_genes: int = 5,
    max_panels: int = 12,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Volcano plots of each comparison and a heatmap of each group's top genes.

    Parameters
    ----------
    results
        The table of :meth:`armed_bio.model.ArmedRNA.differential_expression`.
    n_genes
        Genes labelled per volcano and taken per group into the heatmap (the most
        up-regulated called genes, by ``lfc_mean / lfc_std``).
    max_panels
        Most volcanoes drawn (the first comparisons).
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).

    The heatmap shows each group's mean expression (``scale1``; for one comparison also the
    reference's ``scale2``) as log2 counts per 10k, standardised per gene across the rows.
    """
    if not isinstance(results, pd.DataFrame) or not REQUIRED <= set(results.columns):
        raise ValueError(
            "differential_expression() plots the table returned by "
            "ArmedRNA.differential_expression; the table given lacks "
            f"{sorted(REQUIRED - set(getattr(results, 'columns', [])))}."
        )
    if not isinstance(n_genes, int) or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}.")
    comparisons = list(dict.fromkeys(results["comparison"]))[:max_panels]
    n_cols = min(4, len(comparisons))
    n_rows = int(np.ceil(len(comparisons) / n_cols))
    fig = plt.figure(figsize=(3.2 * n_cols + 4.5, 2.9 * n_rows + 0.3))
    grid = fig.add_gridspec(n_rows, n_cols + 2)
    top: dict[str, list[str]] = {}
    for i, name in enumerate(comparisons):
        ax = fig.add_subplot(grid[i // n_cols, i % n_cols])
        part = results[results["comparison"] == name]
        y, label = _significance(part)
        called = _called(part)
        x = part["lfc_mean"].to_numpy()
        ax.scatter(x[~called], y[~called], s=4, c="0.7", linewidths=0, rasterized=True)
        ax.scatter(x[called], y[called], s=6, c="tab:red", linewidths=0, rasterized=True)
        score = x / np.clip(part["lfc_std"].to_numpy(), 1e-12, None)
        order = np.argsort(-np.where(called, score, -np.inf))[:n_genes]
        order = [o for o in order if called[o]] or list(np.argsort(-score)[:n_genes])
        for o in order[:n_genes]:
            ax.annotate(part.index[o], (x[o], y[o]), fontsize=6)
        top[str(part["group1"].iloc[0])] = [part.index[o] for o in order[:n_genes]]
        ax.axvline(0, c="0.5", lw=0.5)
        ax.set_title(f"{name} ({called.sum()} called)", fontsize=8)
        ax.set_xlabel("log2 fold change", fontsize=7)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=6)

    genes = list(dict.fromkeys(g for names in top.values() for g in names))
    rows = {}
    for g1, part in results.groupby("group1", sort=False):
        rows[str(g1)] = part["scale1"]
    if len(comparisons) == 1:
        only = results[results["comparison"] == comparisons[0]]
        rows[str(only["group2"].iloc[0])] = only["scale2"]
    values = np.log2(pd.DataFrame(rows).T.loc[:, genes].to_numpy(float) * 1e4 + 1)
    z = (values - values.mean(0)) / np.where(values.std(0) > 0, values.std(0), 1)
    ax = fig.add_subplot(grid[:, n_cols:])
    image = ax.imshow(z, aspect="auto", cmap="RdBu_r", vmin=-2, vmax=2)
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    ax.set_title("top genes per group (z of log2 cp10k)", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    return finish(fig, fig.axes, show, save, return_fig)
