"""Place genes on a 2-D grid so that correlated genes sit together.

The algorithm: the gene-gene correlation of log-normalised expression defines a distance
``1 - r``; classical multidimensional scaling turns it into 2-D coordinates; each axis is
rank-uniformised so the genes fill a rectangle evenly; a linear assignment (Hungarian
algorithm) then snaps every gene to its own grid slot, minimising the total squared move.
Every step is deterministic given the cells used (a seeded subsample for large data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from .._validation import check_anndata, check_likelihood, get_matrix, matrix_name
from ..pp._normalise import log_normalised

MAX_GRID_GENES = 4096


def _classical_mds(distance: np.ndarray) -> np.ndarray:
    """Top-2 classical MDS coordinates, signs fixed so the result is deterministic."""
    n = distance.shape[0]
    centring = np.eye(n) - 1.0 / n
    gram = -0.5 * centring @ (distance**2) @ centring
    values, vectors = np.linalg.eigh(gram)
    top = vectors[:, ::-1][:, :2] * np.sqrt(np.maximum(values[::-1][:2], 0.0))
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(2)])
    return top * np.where(signs == 0, 1.0, signs)


def grid_shape(n_genes: int) -> tuple[int, int]:
    """The most square ``(rows, cols)`` grid with at least ``n_genes`` slots."""
    cols = int(np.ceil(np.sqrt(n_genes)))
    rows = int(np.ceil(n_genes / cols))
    return rows, cols


def gene_grid(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    max_cells: int = 5000,
    seed: int = 0,
) -> pd.DataFrame:
    """Grid positions for ``genes`` such that correlated genes are neighbours.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``); the correlations are
        computed on library-normalised log1p expression.
    genes
        Genes to place (default all; at most 4096).
    layer
        Layer holding the counts; ``None``: ``adata.X``.
    max_cells
        Use a seeded random subsample of at most this many cells for the correlations.
    seed
        Seed of that subsample.

    Returns
    -------
    DataFrame indexed by gene with integer ``row`` and ``col`` (each slot used at most once)
    and the MDS coordinates ``x``, ``y`` the grid was snapped from.
    """
    check_anndata(adata)
    counts = get_matrix(adata, layer)
    check_likelihood(counts, "nb", matrix_name(layer))
    names = pd.Index(adata.var_names)
    if genes is None:
        positions = np.arange(adata.n_vars)
    else:
        if isinstance(genes, str):
            raise TypeError(f"genes must be a list of gene names, not {genes!r}.")
        positions = names.get_indexer(list(genes))
        if (positions < 0).any():
            missing = [g for g, p in zip(genes, positions, strict=True) if p < 0]
            raise KeyError(f"genes {missing[:5]} are not in adata.var_names.")
    if not 4 <= len(positions) <= MAX_GRID_GENES:
        raise ValueError(
            f"gene_grid places between 4 and {MAX_GRID_GENES} genes; got {len(positions)}. "
            "Pass e.g. the most variable or most batch-affected genes as `genes=`."
        )
    cells = np.arange(adata.n_obs)
    if adata.n_obs > max_cells:
        cells = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
    expression = log_normalised(counts[cells])[:, positions]
    if (expression.std(axis=0) == 0).any():
        flat = names[positions][expression.std(axis=0) == 0].tolist()
        raise ValueError(
            f"genes {flat[:5]} have constant expression in the cells used, so their "
            "correlations are undefined; leave them out of `genes`."
        )
    distance = 1.0 - np.corrcoef(expression, rowvar=False)
    coords = _classical_mds(distance)
    rows, cols = grid_shape(len(positions))
    # Rank-uniformise each axis onto the grid's extent so genes spread over every slot.
    u = (rankdata(coords[:, 0]) - 0.5) / len(positions) * cols - 0.5
    v = (rankdata(coords[:, 1]) - 0.5) / len(positions) * rows - 0.5
    slot_r, slot_c = np.divmod(np.arange(rows * cols), cols)
    cost = (v[:, None] - slot_r[None, :]) ** 2 + (u[:, None] - slot_c[None, :]) ** 2
    gene_idx, slot = linear_sum_assignment(cost)
    order = np.argsort(gene_idx)
    return pd.DataFrame(
        {
            "row": slot_r[slot[order]],
            "col": slot_c[slot[order]],
            "x": coords[:, 0],
            "y": coords[:, 1],
        },
        index=pd.Index(names[positions], name="gene"),
    )
