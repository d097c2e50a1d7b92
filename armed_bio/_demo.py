"""The main job on the bundled data: train ARMED, write an annotated .h5ad, figures, scores."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402

from . import datasets, metrics, pl, tl  # noqa: E402

logger = logging.getLogger(__name__)


def uncorrected_pca(adata, n_comps: int = 30, seed: int = 0) -> None:
    """Library-normalise, log1p and PCA the counts into ``adata.obsm["X_pca"]``."""
    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
    adata.obsm["X_pca"] = tmp.obsm["X_pca"]


def run_demo(
    out_dir: str | Path = "demo_output",
    max_epochs: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Train ARMED on the bundled CellBench data and write results to ``out_dir``.

    Writes ``cellbench_armed.h5ad`` (``X_pca``, ``X_armed_fe``, ``X_armed_re`` and their UMAPs,
    ``uns["armed"]``), ``umap.png`` (uncorrected / FE / RE by batch and cell type) and
    ``scores.csv`` (silhouette etc. of each embedding against batch and cell type).
    Returns the scores table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adata = datasets.cellbench_lung5()
    print(f"data: CellBench lung5, {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{adata.obs['batch'].nunique()} batches, {adata.obs['cell_type'].nunique()} cell lines")
    uncorrected_pca(adata, seed=seed)
    train_kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
    model = tl.armed(adata, batch_key="batch", seed=seed, **train_kwargs)
    print(f"trained {model.train_params_['epochs_trained']} epochs")
    scores = metrics.cluster_scores(
        adata, ["X_pca", "X_armed_fe", "X_armed_re"], batch_key="batch", label_key="cell_type"
    )
    pl.embeddings(adata, color=["batch", "cell_type"], seed=seed, save=out / "umap.png")
    scores.to_csv(out / "scores.csv")
    adata.write_h5ad(out / "cellbench_armed.h5ad")
    table = scores[["silhouette_batch", "silhouette_label"]].rename(
        columns={"silhouette_batch": "batch silhouette (low = mixed)",
                 "silhouette_label": "cell-type silhouette (high = kept)"}
    )
    print("\n" + table.round(3).to_string())
    print(f"\nwrote {out / 'cellbench_armed.h5ad'}, {out / 'umap.png'}, {out / 'scores.csv'}")
    return scores
