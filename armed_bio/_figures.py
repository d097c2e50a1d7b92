"""The figures of a fitted RNA model, drawn to files (the demo's and ``armed-bio plot``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from anndata import AnnData

from . import metrics, pl, tl
from ._constants import UMAP_SUFFIX

FIGURES = ("umap", "training", "random_effects", "counterfactuals", "gene_layout", "scores")


def one_cell_per_batch(adata: AnnData, batch_key: str, label_key: str | None) -> list[str]:
    """Two cells of the same label (the commonest) from the first and last batch holding it."""
    obs = adata.obs
    if label_key is not None:
        spread = obs.groupby(label_key, observed=True)[batch_key].nunique()
        obs = obs[obs[label_key] == spread.idxmax()]
    firsts = obs.groupby(batch_key, observed=True).head(1).index
    return list(dict.fromkeys([firsts[0], firsts[-1]]))


def draw_rna_figures(
    model,
    adata: AnnData,
    out: str | Path,
    *,
    batch_key: str,
    label_key: str | None = None,
    obsm_keys: Sequence[str] = ("X_pca", "X_armed_fe", "X_armed_re"),
    cells: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[Path], pd.DataFrame]:
    """Draw :data:`FIGURES` of ``model`` on ``adata`` into ``out``; return the files, scores.

    Missing UMAPs of ``obsm_keys`` are computed into ``adata.obsm`` first (``tl.umap``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    obsm_keys = [k for k in obsm_keys if k in adata.obsm]
    missing = [k for k in obsm_keys if k + UMAP_SUFFIX not in adata.obsm]
    if missing:
        tl.umap(adata, missing, seed=seed)
    scores = metrics.cluster_scores(adata, obsm_keys, batch_key=batch_key, label_key=label_key)
    cells = list(cells) if cells is not None else one_cell_per_batch(adata, batch_key, label_key)
    color = [batch_key] + ([label_key] if label_key else [])
    shared = {"show": False, "return_fig": True}
    figures = {
        "umap": pl.embeddings(adata, color=color, obsm_keys=obsm_keys, **shared),
        "training": pl.training(model, **shared),
        "random_effects": pl.random_effects(model, **shared),
        "counterfactuals": pl.counterfactuals(model, adata, cells=cells, **shared),
        "gene_layout": pl.gene_layout(
            model, adata, cells=cells, relative=True, seed=seed, **shared
        ),
        "scores": pl.metrics(scores, **shared),
    }
    paths = []
    for name, fig in figures.items():
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths, scores


def score_table(scores: pd.DataFrame) -> str:
    """The silhouettes of a :func:`armed_bio.metrics.cluster_scores` table, as printed text."""
    names = {
        "silhouette_batch": "batch silhouette (low = mixed)",
        "silhouette_label": "label silhouette (high = kept)",
    }
    columns = [c for c in names if c in scores.columns]
    return scores[columns].rename(columns=names).round(3).to_string()
