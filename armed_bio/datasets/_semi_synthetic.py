"""Semi-synthetic batches: known technical effects applied to real counts by binomial thinning."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def thin_into_batches(
    adata: AnnData,
    n_batches: int = 5,
    effect_sd: float = 0.5,
    depth_range: tuple[float, float] = (0.3, 1.0),
    label_key: str | None = "cell_type",
    mix_concentration: float = 1.0,
    layer: str | None = None,
    seed: int = 0,
) -> AnnData:
    """Split real cells into simulated batches with known per-gene effects and a skewed mix.

    Each cell is assigned a batch, with ``p(batch | cell type)`` drawn from a Dirichlet for
    each type (so batches differ in their cell-type mix), and its counts are binomially thinned,
    ``x' ~ Binomial(x, f[batch, gene])``. The factors are
    ``f[k, g] = depth_k * exp(e[k, g] - max_j e[j, g])`` with ``e ~ N(0, effect_sd^2)``:
    a per-gene technical effect (every factor <= 1, as thinning needs) times a per-batch
    sequencing depth. The untouched counts are kept as the truth: every difference between
    ``.X`` and ``.layers["truth"]`` is technical, and known.

    Parameters
    ----------
    adata
        Real raw counts (in ``.X`` or ``layer``), ideally of one batch, since any batch effect
        already in them becomes part of the "truth".
    n_batches
        Number of simulated batches.
    effect_sd
        S.d. of the per-gene log effects ``e``.
    depth_range
        Range of the per-batch depth factors (drawn uniformly, log scale).
    label_key
        ``adata.obs`` column of the cell types whose mix differs by batch (``None``: the same
        mix everywhere).
    mix_concentration
        Dirichlet concentration of ``p(batch | cell type)``: small values skew the mix more.
    layer
        Layer holding the counts (``None``: ``.X``).
    seed
        Seed of the batch assignment, the effects and the thinning.

    Returns
    -------
    A new AnnData (``adata`` is not modified): thinned counts in ``.X`` (CSR), the original
    counts in ``.layers["truth"]``, the simulated batch in ``.obs["batch"]`` (any existing
    ``batch`` column is kept as ``source_batch``), the true log effects, centred over batches
    for each gene, in ``.varm["true_batch_effect"]`` (genes x batches, the part that a
    per-gene log fold change between batches can recover), the depth factors in
    ``.uns["semi_synthetic"]``.
    """
    if n_batches < 2:
        raise ValueError(f"n_batches must be at least 2, got {n_batches}.")
    if effect_sd < 0:
        raise ValueError(f"effect_sd must be non-negative, got {effect_sd}.")
    low, high = depth_range
    if not 0 < low <= high <= 1:
        raise ValueError(f"depth_range must satisfy 0 < low <= high <= 1, got {depth_range}.")
    counts = adata.layers[layer] if layer is not None else adata.X
    counts = sparse.csr_matrix(counts)
    if counts.nnz and (
        np.any(counts.data < 0) or not np.allclose(counts.data, np.round(counts.data))
    ):
        where = f"layers[{layer!r}]" if layer is not None else ".X"
        raise ValueError(
            f"adata.{where} must hold raw counts (non-negative integers) to be thinned; "
            "pass the layer with the raw counts as `layer=`."
        )
    if label_key is not None and label_key not in adata.obs:
        raise KeyError(f"label_key {label_key!r} is not a column of adata.obs.")
    rng = np.random.default_rng(seed)

    # Batch assignment: a skewed batch mix for each cell type.
    if label_key is None:
        types = np.zeros(adata.n_obs, dtype=int)
    else:
        types = pd.Categorical(adata.obs[label_key]).codes
    mix = rng.dirichlet(np.full(n_batches, mix_concentration), size=types.max() + 1)
    batch = np.array([rng.choice(n_batches, p=mix[t]) for t in types])

    effects = rng.normal(0.0, effect_sd, size=(n_batches, adata.n_vars))
    log_depth = rng.uniform(np.log(low), np.log(high), size=n_batches)
    log_factor = effects - effects.max(0) + log_depth[:, None]

    thinned = counts.astype(np.int64).tocsr()
    rows = np.repeat(np.arange(adata.n_obs), np.diff(thinned.indptr))
    p = np.exp(log_factor[batch[rows], thinned.indices])
    thinned.data = rng.binomial(thinned.data, p)
    thinned.eliminate_zeros()

    names = [f"batch_{k}" for k in range(n_batches)]
    obs = adata.obs.copy()
    if "batch" in obs:
        obs = obs.rename(columns={"batch": "source_batch"})
    obs["batch"] = pd.Categorical.from_codes(batch, categories=names)
    out = AnnData(X=thinned.astype(np.float32), obs=obs, var=adata.var.copy())
    out.layers["truth"] = counts.astype(np.float32)
    out.varm["true_batch_effect"] = (effects - effects.mean(0)).T
    out.uns["semi_synthetic"] = {
        "n_batches": n_batches,
        "effect_sd": effect_sd,
        "depth": dict(zip(names, np.exp(log_depth).tolist(), strict=True)),
        "mix_concentration": mix_concentration,
        "label_key": label_key,
        "seed": seed,
    }
    return out
