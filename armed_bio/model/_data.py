"""Reading cells for inference: gene checks, batch codes and chunked loading.

Inference reads the AnnData directly, in chunks, instead of registering it with scvi-tools:
a query can then hold batches the model never saw (registering would reject or silently
extend the categories) and the user's AnnData is never written to.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from .. import _validation as check

UNSEEN = -1  # batch code of cells whose batch the model has no random effects for


def check_genes(adata: AnnData, var_names: Sequence[str]) -> None:
    """Require exactly the model's genes, in the model's order."""
    query = pd.Index(adata.var_names)
    reference = pd.Index(var_names)
    if query.equals(reference):
        return
    missing = reference.difference(query, sort=False)
    extra = query.difference(reference, sort=False)
    if len(missing):
        raise ValueError(
            f"The AnnData lacks {len(missing)} of the model's {len(reference)} genes (e.g. "
            f"{list(missing[:5])}). Map the query to the training genes first; genes the query "
            "did not measure cannot be imputed as zeros without biasing the latent."
        )
    if len(extra):
        raise ValueError(
            f"The AnnData has {len(extra)} genes the model was not trained on (e.g. "
            f"{list(extra[:5])}). Subset it to the training genes: "
            "`adata = adata[:, model.adata.var_names].copy()`."
        )
    raise ValueError(
        "The AnnData has the model's genes in a different order. Reorder them: "
        "`adata = adata[:, model.adata.var_names].copy()`."
    )


def check_indices(indices: Sequence[int] | np.ndarray | None, n_obs: int) -> np.ndarray:
    """Integer positions (or a boolean mask of length ``n_obs``) as an int64 array."""
    if indices is None:
        return np.arange(n_obs)
    arr = np.asarray(indices)
    if arr.dtype == bool:
        if arr.shape != (n_obs,):
            raise ValueError(
                f"A boolean `indices` mask must have one entry per cell ({n_obs}), got shape "
                f"{arr.shape}."
            )
        return np.flatnonzero(arr)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            "`indices` must be a 1-D sequence of integer cell positions or a boolean mask; "
            f"got dtype {arr.dtype} with shape {arr.shape}. For cell names use "
            "`adata.obs_names.get_indexer(names)`."
        )
    bad = arr[(arr < 0) | (arr >= n_obs)]
    if bad.size:
        raise IndexError(
            f"`indices` has {bad.size} positions outside 0..{n_obs - 1} (e.g. {bad[:5].tolist()}); "
            f"the AnnData has {n_obs} cells."
        )
    return arr.astype(np.int64)


def batch_codes(
    adata: AnnData, batch_key: str, categories: Sequence, positions: np.ndarray
) -> tuple[np.ndarray, list]:
    """Code of each selected cell's batch among ``categories``; ``UNSEEN`` for any other batch.

    Returns the codes of the cells at ``positions`` and the names of their unseen batches. A
    query without the batch column, or with missing values in it, has cells of unknown batch:
    they are treated as unseen.
    """
    if batch_key not in adata.obs.columns:
        return np.full(len(positions), UNSEEN, dtype=np.int64), ["<no batch column>"]
    values = adata.obs[batch_key].to_numpy()[positions]
    lookup = {c: i for i, c in enumerate(categories)}
    codes = np.array([lookup.get(v, UNSEEN) for v in values], dtype=np.int64)
    unseen = pd.unique(pd.Series(values[codes == UNSEEN], dtype=object))
    return codes, ["<missing>" if pd.isna(v) else v for v in unseen]


def check_query_matrix(adata: AnnData, layer: str | None, likelihood: str):
    """The data matrix of a query, after the checks inference needs (finite, count-like)."""
    matrix = check.get_matrix(adata, layer)
    where = check.matrix_name(layer)
    n_bad = check.count_nonfinite(matrix)
    if n_bad:
        raise ValueError(
            f"{where} contains {n_bad} NaN or infinite values. Remove or impute them first."
        )
    check.check_likelihood(matrix, likelihood, where)
    return matrix


def iter_chunks(
    matrix, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(positions in indices, dense float32 rows)`` chunk by chunk."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for start in range(0, len(indices), batch_size):
        part = slice(start, min(start + batch_size, len(indices)))
        rows = matrix[indices[part]]
        rows = rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
        yield part, torch.as_tensor(rows, dtype=torch.float32)
