"""Cluster-separation scores of embeddings against batch and label (scMEDAL's table)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from .._validation import check_anndata, check_obs_keys, check_obsm_keys


def subsample(n_obs: int, n_sample: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subsample of ``n_sample`` cells (all if None)."""
    if n_sample is None or n_sample >= n_obs:
        return np.arange(n_obs)
    return np.sort(np.random.default_rng(seed).choice(n_obs, n_sample, replace=False))


def cluster_scores(
    adata: AnnData,
    obsm_keys: Sequence[str],
    batch_key: str,
    label_key: str | None = None,
    n_sample: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """1/Davies-Bouldin, Calinski-Harabasz and silhouette of each embedding.

    Scored against the batch (lower = better mixed) and against the label (higher = better
    separated). Deterministic: the optional subsample is drawn with ``seed``.

    Parameters
    ----------
    adata
        AnnData holding the embeddings in ``.obsm``.
    obsm_keys
        Embeddings to score, e.g. ``["X_pca", "X_armed_fe", "X_armed_re"]``.
    batch_key, label_key
        ``adata.obs`` columns to score against.
    n_sample
        Score a random subsample of this many cells (``None``: all cells).
    seed
        Seed of the subsample.

    Returns
    -------
    One row per embedding; columns ``<metric>_<key>`` for ``batch`` and ``label``.
    """
    check_anndata(adata)
    keys = {"batch": batch_key} if label_key is None else {"batch": batch_key, "label": label_key}
    obsm_keys = check_obsm_keys(adata, obsm_keys)
    check_obs_keys(adata, list(keys.values()))
    idx = subsample(adata.n_obs, n_sample, seed)
    rows = []
    for emb in obsm_keys:
        x = np.asarray(adata.obsm[emb])[idx]
        row: dict[str, float | str] = {"embedding": emb}
        for role, key in keys.items():
            groups = adata.obs[key].to_numpy()[idx]
            n_groups = len(pd.unique(groups))
            if n_groups < 2 or n_groups >= len(idx):
                raise ValueError(
                    f"{key!r} has {n_groups} groups among {len(idx)} cells; the scores need "
                    "between 2 and n_cells - 1 groups."
                )
            row[f"inv_davies_bouldin_{role}"] = 1.0 / davies_bouldin_score(x, groups)
            row[f"calinski_harabasz_{role}"] = calinski_harabasz_score(x, groups)
            row[f"silhouette_{role}"] = silhouette_score(x, groups)
        rows.append(row)
    return pd.DataFrame(rows).set_index("embedding")
