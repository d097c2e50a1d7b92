"""Rebuild ``cellbench_lung5_hvg2k.h5ad`` from ``../shared/data/cellbench_lung5.h5ad``.

Keeps every cell and the 2,000 highly variable genes chosen by scanpy's ``seurat_v3`` flavour
on raw counts with ``batch_key="batch"`` (so no single plate dominates the selection).
Counts are left untouched (raw integers, CSR float32). Run from the repository root:

    .venv/bin/python data/make_cellbench_lung5_hvg2k.py
"""

from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc

SRC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cellbench_lung5.h5ad"
DST = Path(__file__).resolve().parent / "cellbench_lung5_hvg2k.h5ad"


def main() -> None:
    adata = ad.read_h5ad(SRC)
    hvg = sc.pp.highly_variable_genes(
        adata, n_top_genes=2000, flavor="seurat_v3", batch_key="batch", inplace=False
    )
    keep = np.asarray(hvg["highly_variable"].to_numpy(), dtype=bool)
    sub = adata[:, keep].copy()
    sub.obs = sub.obs[["batch", "protocol", "design", "library", "cell_type", "n_counts"]]
    sub.var = sub.var[["gene_ids"]]
    source = dict(adata.uns["source"])
    source["subset"] = (
        "all 1,021 cells; 2,000 HVGs by scanpy seurat_v3 (batch_key='batch') on raw counts; "
        "made by data/make_cellbench_lung5_hvg2k.py"
    )
    sub.uns = {"source": source}
    sub.write_h5ad(DST, compression="gzip")
    print(f"wrote {DST} {sub.shape}")


if __name__ == "__main__":
    main()
