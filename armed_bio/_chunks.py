"""Reading rows of a matrix or an image array in chunks, as float32 tensors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import sparse


def iter_chunks(
    matrix, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(positions in indices, dense float32 rows)`` chunk by chunk.

    ``matrix`` is anything indexed by cell positions: a dense or sparse cells x genes matrix,
    or an ``(n_cells, C, H, W)`` image array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    for start in range(0, len(indices), batch_size):
        part = slice(start, min(start + batch_size, len(indices)))
        # No local keeps the chunk: once the consumer lets it go it is freed before the next
        # is read, so the heap reuses its pages (holding it grew the heap ~8 MB a chunk).
        yield part, torch.as_tensor(_dense(matrix[indices[part]]), dtype=torch.float32)


def _dense(rows) -> np.ndarray:
    return rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
