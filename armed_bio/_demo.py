"""The main job on the bundled data: train ARMED, write an annotated .h5ad, figures, scores."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd

from . import datasets, pp, tl
from ._figures import FIGURES, draw_rna_figures, score_table

logger = logging.getLogger(__name__)


def run_demo(
    out_dir: str | Path = "demo_output",
    max_epochs: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Train ARMED on the bundled CellBench data and write results to ``out_dir``.

    Writes ``cellbench_armed.h5ad`` (``X_pca``, ``X_armed_fe``, ``X_armed_re`` and their UMAPs,
    ``uns["armed"]``), ``scores.csv`` (silhouette etc. of each embedding against batch and
    cell type), ``most_batch_affected_genes.csv`` and the figures ``umap.png`` (uncorrected /
    FE / RE by batch and cell type), ``training.png``, ``random_effects.png``,
    ``counterfactuals.png``, ``gene_layout.png`` and ``scores.png``.
    Returns the scores table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adata = datasets.cellbench_lung5()
    print(
        f"data: CellBench lung5, {adata.n_obs} cells x {adata.n_vars} genes, "
        f"{adata.obs['batch'].nunique()} batches, {adata.obs['cell_type'].nunique()} cell lines"
    )
    pp.log_pca(adata, seed=seed)
    train_kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
    model = tl.armed(adata, batch_key="batch", seed=seed, **train_kwargs)
    print(f"trained {model.train_params_['epochs_trained']} epochs")
    # The same cell line (H1975, in every batch) seen in two batches.
    h1975 = adata.obs[adata.obs["cell_type"] == "H1975"]
    cells = list(h1975.groupby("batch", observed=True).head(1).index[[0, -1]])
    _, scores = draw_rna_figures(
        model, adata, out, batch_key="batch", label_key="cell_type", cells=cells, seed=seed
    )
    genes = model.get_gene_batch_variance()
    genes.head(50).to_csv(out / "most_batch_affected_genes.csv")
    scores.to_csv(out / "scores.csv")
    adata.write_h5ad(out / "cellbench_armed.h5ad")
    print("\n" + score_table(scores))
    print(f"\nmost batch-affected genes: {', '.join(genes.index[:8])}")
    print(
        f"\nwrote {out / 'cellbench_armed.h5ad'}, scores.csv, most_batch_affected_genes.csv "
        f"and figures {', '.join(f + '.png' for f in FIGURES)} in {out}"
    )
    return scores
