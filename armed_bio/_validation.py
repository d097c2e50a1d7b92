"""Checks on user input. Each raises an error that names the problem and the fix.

All checks read the AnnData and never write to it, so a failed call leaves it unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._constants import COUNT_LIKELIHOODS, LIKELIHOODS


def check_anndata(adata: Any, name: str = "adata") -> AnnData:
    """Raise ``TypeError`` unless ``adata`` is an AnnData."""
    if not isinstance(adata, AnnData):
        raise TypeError(
            f"`{name}` must be an anndata.AnnData, got {type(adata).__name__}. "
            "Load your data with `anndata.read_h5ad(path)` or build one with `anndata.AnnData(X)`."
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"`{name}` is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "ARMED needs at least one cell and one gene."
        )
    return adata


def check_batch_key(adata: AnnData, batch_key: str | None, min_batches: int = 2) -> pd.Series:
    """Return the batch column after checking it exists, has no missing values and >=2 levels."""
    if batch_key is None:
        raise ValueError(
            "ARMED models the batch as a random effect, so `batch_key` is required: pass the "
            "name of the `adata.obs` column holding the batch/donor/plate of each cell."
        )
    if batch_key not in adata.obs.columns:
        raise KeyError(
            f"batch_key {batch_key!r} is not a column of adata.obs. Available columns: "
            f"{list(adata.obs.columns)}."
        )
    batches = adata.obs[batch_key]
    n_missing = int(batches.isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {n_missing} missing values. Give every cell a batch "
            "(e.g. a category 'unknown') or subset to the annotated cells first."
        )
    n_levels = batches.nunique()
    if n_levels < min_batches:
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {n_levels} batch; ARMED needs at least {min_batches} "
            "to separate fixed from random effects. With one batch, use a plain autoencoder "
            "such as scvi.model.SCVI."
        )
    return batches


def check_labels_key(adata: AnnData, labels_key: str | None) -> None:
    """Check an optional label column exists and has no missing values."""
    if labels_key is None:
        return
    if labels_key not in adata.obs.columns:
        raise KeyError(
            f"labels_key {labels_key!r} is not a column of adata.obs. Available columns: "
            f"{list(adata.obs.columns)}."
        )
    n_missing = int(adata.obs[labels_key].isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs[{labels_key!r}] has {n_missing} missing values; fill them (e.g. "
            "'unknown') or subset to labelled cells."
        )


def matrix_name(layer: str | None) -> str:
    """How error messages name the data matrix: ``adata.X`` or ``adata.layers['...']``."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.layers[layer]`` or ``adata.X`` after checking it exists."""
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "adata.X is empty (None). Put the counts in adata.X or pass `layer=` naming "
                f"the layer that holds them (available: {list(adata.layers.keys())})."
            )
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} is not in adata.layers (available: {list(adata.layers.keys())}). "
            "Pass layer=None to use adata.X."
        )
    return adata.layers[layer]


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse matrix (zeros of sparse matrices excluded)."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix)


def check_matrix(matrix, where: str) -> None:
    """Reject NaN/inf, all-zero cells and all-zero genes."""
    values = _values(matrix)
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{where} has dtype {values.dtype}; expected numbers.")
    n_bad = int(values.size - np.isfinite(values).sum())
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Remove or impute them before "
            "fitting (e.g. `adata = adata[np.isfinite(...)]`), or point `layer=` at raw counts."
        )
    nonzero = matrix != 0
    per_cell = np.asarray(nonzero.sum(axis=1)).ravel()
    per_gene = np.asarray(nonzero.sum(axis=0)).ravel()
    empty_cells = int((per_cell == 0).sum())
    if empty_cells:
        raise ValueError(
            f"{where} has {empty_cells} empty cells (all values zero). Remove them with "
            "`sc.pp.filter_cells(adata, min_counts=1)`."
        )
    empty_genes = int((per_gene == 0).sum())
    if empty_genes:
        raise ValueError(
            f"{where} has {empty_genes} empty genes (zero in every cell). Remove them with "
            "`sc.pp.filter_genes(adata, min_cells=1)`."
        )


def check_likelihood(matrix, likelihood: str, where: str) -> None:
    """Count likelihoods need non-negative integers."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
    if likelihood not in COUNT_LIKELIHOODS:
        return
    values = _values(matrix)
    values = values[np.isfinite(values)]  # NaN/inf are reported by check_matrix
    n_negative = int((values < 0).sum())
    if n_negative:
        raise ValueError(
            f"{where} has {n_negative} negative values, but likelihood={likelihood!r} models "
            "counts. Point `layer=` at the raw counts, or use likelihood='gaussian' for "
            "log-normalised/scaled data."
        )
    n_fractional = int((values != np.round(values)).sum())
    if n_fractional:
        raise ValueError(
            f"{where} has {n_fractional} non-integer values, but likelihood={likelihood!r} "
            "models raw counts. Point `layer=` at the raw counts (e.g. layer='counts'), or use "
            "likelihood='gaussian' for log-normalised data."
        )
