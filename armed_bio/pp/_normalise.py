"""Library-size normalisation and log1p of counts, as the model's encoder sees them."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .._constants import NORMALISATION_TARGET


def log_normalised(counts, target_sum: float = NORMALISATION_TARGET) -> np.ndarray:
    """Dense ``log1p(counts / library * target_sum)`` (float64) of a cells x genes matrix.

    Cells with no counts stay at 0 (their library is taken as 1).
    """
    counts = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
    counts = counts.astype(np.float64)
    library = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(library, 1.0) * target_sum)
