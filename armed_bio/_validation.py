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


def check_unique_names(adata: AnnData, axes: tuple[str, ...] = ("var", "obs")) -> None:
    """Raise if gene (``var``) or cell (``obs``) names repeat: results are keyed by them."""
    for axis in axes:
        names = adata.var_names if axis == "var" else adata.obs_names
        repeated = names[names.duplicated()].unique()
        if len(repeated):
            what = "gene" if axis == "var" else "cell"
            raise ValueError(
                f"adata.{axis}_names has {len(repeated)} repeated {what} names (e.g. "
                f"{list(repeated[:3])}): which {what} is which would be ambiguous in latents, "
                f"counterfactuals, DE and plots. Make them unique first with "
                f"`adata.{axis}_names_make_unique()`."
            )


def check_finite_output(values: np.ndarray, what: str, where: str) -> np.ndarray:
    """Refuse to write non-finite model outputs: the last defence against a diverged model."""
    n_bad = int(values.size - np.isfinite(values).sum())
    if n_bad:
        raise FloatingPointError(
            f"{what} has {n_bad} non-finite values (NaN or inf), so it was not written to "
            f"{where}. The model's weights are not finite (a diverged training run): retrain "
            "with a lower learning rate, e.g. `train(plan_kwargs={'lr': 1e-4})`."
        )
    return values


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


# Values scanned per step: checks of a large matrix hold a few blocks, never a full copy.
SCAN_BLOCK = 1 << 22


def _value_blocks(matrix):
    """The stored values of a dense or sparse matrix, as 1-D blocks of ~SCAN_BLOCK values.

    Zeros of sparse matrices are not stored and so not scanned.
    """
    if sparse.issparse(matrix):
        data = np.asarray(matrix.data)
        for start in range(0, data.size, SCAN_BLOCK):
            yield data[start : start + SCAN_BLOCK]
        return
    dense = np.asarray(matrix)
    if dense.ndim < 2:
        yield dense.ravel()
        return
    rows = max(1, SCAN_BLOCK // max(dense.shape[1], 1))
    for start in range(0, dense.shape[0], rows):
        yield dense[start : start + rows].ravel()


def _compressed_counts(data, indices, indptr, n_minor: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-zeros per major (row of CSR) and per minor index, a few thousand rows at a time."""
    n_major = len(indptr) - 1
    per_major = np.zeros(n_major, dtype=np.int64)
    per_minor = np.zeros(n_minor, dtype=np.int64)
    start = 0
    while start < n_major:
        stop = int(np.searchsorted(indptr, indptr[start] + SCAN_BLOCK, side="right")) - 1
        stop = min(n_major, max(stop, start + 1))
        lo, hi = int(indptr[start]), int(indptr[stop])
        nz = np.asarray(data[lo:hi]) != 0
        per_minor += np.bincount(np.asarray(indices[lo:hi])[nz], minlength=n_minor)
        cum = np.concatenate([[0], np.cumsum(nz)])
        bounds = np.asarray(indptr[start : stop + 1]) - lo
        per_major[start:stop] = cum[bounds[1:]] - cum[bounds[:-1]]
        start = stop
    return per_major, per_minor


def _nonzero_counts(matrix) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero values per cell and per gene, without a copy of the matrix."""
    if sparse.issparse(matrix):
        if matrix.format not in ("csr", "csc"):
            matrix = sparse.csr_matrix(matrix)
        n_cells, n_genes = matrix.shape
        if matrix.format == "csr":
            return _compressed_counts(matrix.data, matrix.indices, matrix.indptr, n_genes)
        per_gene, per_cell = _compressed_counts(matrix.data, matrix.indices, matrix.indptr, n_cells)
        return per_cell, per_gene
    dense = np.asarray(matrix)
    rows = max(1, SCAN_BLOCK // max(dense.shape[1], 1))
    per_cell = np.zeros(dense.shape[0], dtype=np.int64)
    per_gene = np.zeros(dense.shape[1], dtype=np.int64)
    for start in range(0, dense.shape[0], rows):
        nz = dense[start : start + rows] != 0
        per_cell[start : start + rows] = nz.sum(axis=1)
        per_gene += nz.sum(axis=0)
    return per_cell, per_gene


def _dtype(matrix) -> np.dtype:
    return np.asarray(matrix.data).dtype if sparse.issparse(matrix) else np.asarray(matrix).dtype


def count_nonfinite(matrix) -> int:
    """Number of NaN or infinite values, scanned block by block."""
    return sum(int(b.size - np.count_nonzero(np.isfinite(b))) for b in _value_blocks(matrix))


def check_matrix(matrix, where: str) -> None:
    """Reject NaN/inf, all-zero cells and all-zero genes."""
    dtype = _dtype(matrix)
    if not np.issubdtype(dtype, np.number):
        raise TypeError(f"{where} has dtype {dtype}; expected numbers.")
    n_bad = count_nonfinite(matrix)
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Remove or impute them before "
            "fitting (e.g. `adata = adata[np.isfinite(...)]`), or point `layer=` at raw counts."
        )
    per_cell, per_gene = _nonzero_counts(matrix)
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
    n_negative = n_fractional = 0
    for block in _value_blocks(matrix):
        block = block[np.isfinite(block)]  # NaN/inf are reported by check_matrix
        n_negative += int(np.count_nonzero(block < 0))
        n_fractional += int(np.count_nonzero(block != np.round(block)))
    if n_negative:
        raise ValueError(
            f"{where} has {n_negative} negative values, but likelihood={likelihood!r} models "
            "counts. Point `layer=` at the raw counts, or use likelihood='gaussian' for "
            "log-normalised/scaled data."
        )
    if n_fractional:
        raise ValueError(
            f"{where} has {n_fractional} non-integer values, but likelihood={likelihood!r} "
            "models raw counts. Point `layer=` at the raw counts (e.g. layer='counts'), or use "
            "likelihood='gaussian' for log-normalised data."
        )


def check_obsm_keys(adata: AnnData, obsm_keys, what: str = "obsm keys") -> list[str]:
    """Return ``obsm_keys`` as a list after checking each is in ``adata.obsm``."""
    keys = [obsm_keys] if isinstance(obsm_keys, str) else list(obsm_keys)
    if not keys:
        raise ValueError(f"No {what} given; pass e.g. ['X_pca', 'X_armed_fe'].")
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise KeyError(
            f"{what} {missing} not in adata.obsm (available: {list(adata.obsm)}). Compute them "
            "first, e.g. `model.write_to_adata()` or `armed_bio.pp.log_pca(adata)`."
        )
    return keys


def check_obs_keys(adata: AnnData, obs_keys, what: str = "obs keys") -> list[str]:
    """Return ``obs_keys`` as a list after checking each is a column of ``adata.obs``."""
    keys = [obs_keys] if isinstance(obs_keys, str) else list(obs_keys)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise KeyError(f"{what} {missing} not in adata.obs (available: {list(adata.obs)}).")
    return keys


def check_images(adata: AnnData, image_key: str, positions: np.ndarray | None = None) -> tuple:
    """Check ``adata.obsm[image_key]`` holds finite numeric images ``(n, C, H, W)``.

    ``positions`` restricts the finiteness scan to those cells. Returns ``(C, H, W)``.
    """
    if not isinstance(image_key, str) or image_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no images under {image_key!r} (keys: {list(adata.obsm.keys())}). "
            "Store crops as `adata.obsm['image'] = array` of shape (n_cells, C, H, W), e.g. "
            "with `armed_bio.pp.crop_objects`, or pass image_key=."
        )
    images = adata.obsm[image_key]
    where = f"adata.obsm[{image_key!r}]"
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"{where} is a {type(images).__name__}; expected a numpy array (n_cells, C, H, W)."
        )
    if images.ndim != 4:
        hint = ""
        if images.ndim == 3:
            hint = (
                f" For single-channel images add a channel axis: "
                f"`adata.obsm[{image_key!r}] = images[:, None]`."
            )
        raise ValueError(
            f"{where} has shape {images.shape} (rank {images.ndim}); expected rank 4, "
            f"(n_cells, C, H, W).{hint}"
        )
    if 0 in images.shape:
        raise ValueError(f"{where} is empty (shape {images.shape}); every axis needs size > 0.")
    if images.shape[-1] <= 4 < images.shape[1]:  # (n, H, W, C) with few channels
        raise ValueError(
            f"{where} has shape {images.shape}: it looks channels-last (n, H, W, C). Transpose "
            f"it: `adata.obsm[{image_key!r}] = images.transpose(0, 3, 1, 2)`."
        )
    if (
        images.dtype == bool
        or not np.issubdtype(images.dtype, np.number)
        or np.issubdtype(images.dtype, np.complexfloating)
    ):
        raise TypeError(
            f"{where} has dtype {images.dtype}; expected real numbers (uint8/16, float)."
        )
    if np.issubdtype(images.dtype, np.floating):
        rows = range(images.shape[0]) if positions is None else positions
        rows = np.asarray(rows)
        n_bad = 0
        for start in range(0, len(rows), 512):  # bounded memory on large stacks
            n_bad += int((~np.isfinite(images[rows[start : start + 512]])).sum())
        if n_bad:
            raise ValueError(
                f"{where} contains {n_bad} NaN or infinite pixel values. Drop or repair those "
                "crops first."
            )
    return tuple(int(s) for s in images.shape[1:])
