"""Render every armed_bio plot on real data into docs/figures/ (the figures in README/docs).

Run: ``.venv/bin/python docs/make_figures.py [cellbench_lung5|kang_pbmc_5donors]``
(default cellbench_lung5, the one rendered in docs/figures; about 5 min on one CPU core).
Reads ``../shared/data``; nothing downloads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
import torch

import armed_bio as ab

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIGURES = ROOT / "docs" / "figures"
SEED = 0


def load(name: str) -> ad.AnnData:
    adata = ad.read_h5ad(SHARED / f"{name}.h5ad")
    if adata.n_vars > 2000:
        hvg = sc.pp.highly_variable_genes(
            adata, n_top_genes=2000, flavor="seurat_v3", batch_key="batch", inplace=False
        )
        adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    sc.pp.filter_genes(adata, min_cells=1)
    sc.pp.filter_cells(adata, min_counts=1)
    return adata


def one_cell_per_batch(adata: ad.AnnData, label: str) -> list[str]:
    """The first cell of ``label`` in each of two batches (the same cell type, two batches)."""
    cells = adata.obs[adata.obs["cell_type"] == label]
    firsts = cells.groupby("batch", observed=True).head(1)
    return list(firsts.index[:2])


def render(name: str) -> None:
    out = FIGURES / name
    out.mkdir(parents=True, exist_ok=True)
    adata = load(name)
    ab.pp.log_pca(adata, seed=SEED)
    ab.model.ArmedRNA.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = ab.model.ArmedRNA(adata, seed=SEED)
    model.train(seed=SEED, accelerator="cpu")
    model.write_to_adata()
    keys = ["X_pca", "X_armed_fe", "X_armed_re"]
    ab.tl.umap(adata, keys, seed=SEED)
    fig_kw = {"show": False, "return_fig": True}
    figs = {
        "embeddings": ab.pl.embeddings(adata, color=["batch", "cell_type"], **fig_kw),
        "training": ab.pl.training(model, **fig_kw),
        "random_effects": ab.pl.random_effects(model, n_genes=20, **fig_kw),
    }
    label = adata.obs["cell_type"].value_counts().index[0]
    cells = one_cell_per_batch(adata, label)
    figs["counterfactuals"] = ab.pl.counterfactuals(model, adata, cells=cells, n_genes=30, **fig_kw)
    figs["gene_layout"] = ab.pl.gene_layout(
        model, adata, cells=cells, n_genes=400, seed=SEED, **fig_kw
    )
    figs["gene_layout_relative"] = ab.pl.gene_layout(
        model, adata, cells=cells, n_genes=400, relative=True, seed=SEED, **fig_kw
    )
    scores = ab.metrics.cluster_scores(adata, keys, "batch", "cell_type")
    figs["cluster_scores"] = ab.pl.metrics(scores, **fig_kw)
    scib = ab.metrics.scib(adata, keys, "batch", "cell_type", n_sample=3000, seed=SEED)
    figs["scib"] = ab.pl.metrics(scib, **fig_kw)
    for fig_name, fig in figs.items():
        fig.savefig(out / f"{fig_name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    scores.round(4).to_csv(out / "cluster_scores.csv")
    scib.round(4).to_csv(out / "scib.csv", index=False)
    variance = model.get_gene_batch_variance()
    variance.head(20).round(4).to_csv(out / "most_batch_affected_genes.csv")
    effects = model.get_random_effects()
    offset = effects[effects["layer"] == "decoder.output_offset"]
    size = offset.groupby("batch", observed=True)["mean"].apply(lambda m: np.sqrt(np.mean(m**2)))
    print(f"{name}: offset RMS per batch\n{size.round(4).to_string()}")
    print(f"top genes\n{variance.head(10).round(4).to_string()}")
    print(f"cells shown: {cells} ({label})")
    print(scores.round(3).to_string())
    print(scib.pivot(index="embedding", columns="metric", values="value").round(3).to_string())


if __name__ == "__main__":
    torch.set_num_threads(1)
    for dataset in sys.argv[1:] or ["cellbench_lung5"]:
        render(dataset)
