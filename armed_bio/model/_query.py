"""Reading a query for inference: checks, batch codes, chunks and each cell's design ``Z``.

Inference reads the AnnData directly, in chunks, instead of registering it with scvi-tools:
a query can then hold batches the model never saw (registering would reject or silently
extend the categories) and the user's AnnData is never written to.

The design matrix ``Z`` of each cell: a cell of a batch the model has random effects for gets
its one-hot ``Z``. A cell of any other batch gets the Z-predictor's calibrated batch
probabilities (soft ``Z``: a mixture of the seen batches it resembles), unless the prediction
is unsure, in which case it gets ``Z = 0`` (fixed effects only).

"Unsure" means the normalised entropy ``H(p) / log(K)`` of the probabilities over the ``K``
seen batches exceeds ``threshold`` (default 0.5). 0 is a certain prediction, 1 the uniform one;
0.5 corresponds to an effective number of batches ``exp(H)`` of ``sqrt(K)``: for 4 seen
batches, a cell spread evenly over two of them sits exactly at the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _validation as check

UNSEEN = -1  # batch code of cells whose batch the model has no random effects for
DEFAULT_ENTROPY_THRESHOLD = 0.5


def check_genes(adata: AnnData, var_names: Sequence[str]) -> None:
    """Require exactly the model's genes, in the model's order, each once."""
    check.check_unique_names(adata, axes=("var",))
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


@dataclass
class RouteCounts:
    """How many cells took each route during one call."""

    seen: int = 0
    soft: int = 0
    zero: int = 0
    unseen_batches: list = field(default_factory=list)

    def add(self, other: RouteCounts) -> None:
        self.seen += other.seen
        self.soft += other.soft
        self.zero += other.zero

    def message(self, what: str, threshold: float, routes_used: bool = True) -> str:
        """One log line describing the routes, e.g. for ``what="z_RE of"``.

        ``routes_used=False``: the output does not depend on the cells' own batch (``z_FE``,
        the FE head, counterfactuals); the line says so.
        """
        n_unseen = self.soft + self.zero
        if not routes_used:
            text = f"{what} {self.seen + n_unseen} cells; their own batch is not used"
            if n_unseen:
                text += f" ({n_unseen} are of unseen batches {self.unseen_batches})"
            return text + "."
        parts = []
        if self.seen:
            parts.append(f"{self.seen} of seen batches with their own random effects")
        if n_unseen:
            parts.append(
                f"{n_unseen} of unseen batches {self.unseen_batches}: soft Z from the "
                f"Z-predictor for {self.soft}, Z = 0 (fixed effects only) for {self.zero} "
                f"whose normalised batch entropy exceeded {threshold:g}"
            )
        return f"{what} {self.seen + n_unseen} cells: " + "; ".join(parts) + "."


def normalised_entropy(proba: torch.Tensor) -> torch.Tensor:
    """``H(p) / log(K)`` per row, in [0, 1]."""
    k = proba.shape[-1]
    if k < 2:
        return torch.zeros(proba.shape[:-1], device=proba.device)
    h = -(proba * torch.log(proba.clamp(min=1e-12))).sum(-1)
    return h / math.log(k)


def route_design(
    module, x: torch.Tensor, codes: np.ndarray, threshold: float
) -> tuple[torch.Tensor, RouteCounts]:
    """The ``(cells, n_batch)`` design matrix for a chunk and the routes it used."""
    n_batch = module.n_batch
    design = torch.zeros(x.shape[0], n_batch, device=x.device)
    codes_t = torch.as_tensor(codes, device=x.device)
    seen = codes_t != UNSEEN
    design[seen, codes_t[seen]] = 1.0
    counts = RouteCounts(seen=int(seen.sum()))
    unseen = (~seen).nonzero().view(-1)
    if unseen.numel() and module.has_random_effects:
        proba = module.batch_probabilities(x[unseen])
        sure = normalised_entropy(proba) <= threshold
        design[unseen[sure], : proba.shape[1]] = proba[sure]
        counts.soft = int(sure.sum())
        counts.zero = int((~sure).sum())
    else:
        counts.zero = int(unseen.numel())
    return design, counts


def check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"entropy_threshold must lie in [0, 1] (a normalised entropy), got {threshold!r}."
        )
    return float(threshold)
