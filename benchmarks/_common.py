"""Helpers shared by the benchmark scripts: data preparation, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import anndata as ad
import lightning.pytorch as pl
import numpy as np
import scanpy as sc
import torch

# The shared real data: $ARMED_BIO_DATA, or ../shared/data beside the checkout.
SHARED = Path(
    os.environ.get("ARMED_BIO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = {
    "kang_pbmc_5donors": "kang_pbmc_5donors.h5ad",
    "cellbench_lung5": "cellbench_lung5.h5ad",
}


def load_hvg(name: str, n_top_genes: int = 2000) -> ad.AnnData:
    """A shared real dataset cut to batch-aware seurat_v3 HVGs (the same for every method)."""
    adata = ad.read_h5ad(SHARED / DATASETS[name])
    if adata.n_vars > n_top_genes:
        hvg = sc.pp.highly_variable_genes(
            adata, n_top_genes=n_top_genes, flavor="seurat_v3", batch_key="batch", inplace=False
        )
        adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    sc.pp.filter_cells(adata, min_counts=1)
    sc.pp.filter_genes(adata, min_cells=1)
    return adata


class EpochTimer(pl.Callback):
    """Wall-clock seconds of each training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._t)


def steady(times: list[float]) -> float:
    """Median epoch time, first epoch (warm-up) excluded when there are more."""
    return float(np.median(times[1:] if len(times) > 1 else times))


def machine() -> dict:
    import scvi

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "scvi_tools": scvi.__version__,
    }


def write_results(stem: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=float))
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)
