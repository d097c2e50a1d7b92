"""How well a fresh classifier predicts the batch from an embedding: "is any batch left?"."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._validation import check_anndata, check_obs_keys, check_obsm_keys
from ._cluster import subsample

CLASSIFIERS: tuple[str, ...] = ("linear", "knn")
ALL_CELLS = "all cells"


def _classifier(kind: str, n_neighbors: int, seed: int):
    if kind == "linear":
        head = LogisticRegression(max_iter=2000, random_state=seed)
    else:
        head = KNeighborsClassifier(n_neighbors=n_neighbors)
    return make_pipeline(StandardScaler(), head)


def _score(x, batches, kind, n_splits, n_neighbors, seed) -> dict:
    """Cross-validated balanced accuracy on one group of cells, or why it was not scored."""
    counts = pd.Series(batches).value_counts()
    kept = counts.index[counts >= n_splits]
    row = {
        "n_cells": len(batches),
        "n_batches": int(len(kept)),
        "n_batches_too_small": int(len(counts) - len(kept)),
    }
    if len(kept) < 2:
        return {
            **row,
            "balanced_accuracy": np.nan,
            "chance": np.nan,
            "note": f"fewer than 2 batches with >= {n_splits} cells",
        }
    mask = np.isin(batches, kept)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_score(
        _classifier(kind, min(n_neighbors, int(mask.sum() * 0.5)), seed),
        x[mask],
        batches[mask],
        cv=folds,
        scoring="balanced_accuracy",
    )
    return {
        **row,
        "n_cells": int(mask.sum()),
        "balanced_accuracy": float(scores.mean()),
        "chance": 1.0 / len(kept),
        "note": "",
    }


def batch_predictability(
    adata: AnnData,
    obsm_keys: Sequence[str],
    batch_key: str,
    label_key: str | None = None,
    classifiers: Sequence[str] = CLASSIFIERS,
    n_splits: int = 5,
    n_neighbors: int = 15,
    n_sample: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Balanced accuracy of predicting the batch from each embedding, overall and per label.

    A fresh classifier (on standardised coordinates) is scored by ``n_splits``-fold
    stratified cross-validation. Chance is ``1 / n_batches``; an embedding with no batch
    left scores at chance. Over all cells a low score can hide batch structure inside each
    cell type (an embedding may erase what predicts the batch through the cell-type mix and
    keep the batch within each type); the per-label rows measure that, which is what kBET and
    iLISI reward. ``"linear"`` is a logistic regression (global, linear structure),
    ``"knn"`` a k-nearest-neighbour vote (local mixing).

    Parameters
    ----------
    adata
        AnnData holding the embeddings in ``.obsm``; it is not modified.
    obsm_keys
        Embeddings to score, e.g. ``["X_pca", "X_armed_fe"]``.
    batch_key
        ``adata.obs`` column of the batch.
    label_key
        Optional ``adata.obs`` column of cell labels: adds one row per label and a
        ``"within labels"`` row, the mean over labels weighted by their scored cells.
    classifiers
        Any of ``"linear"`` and ``"knn"``.
    n_splits
        Cross-validation folds. In each group, batches with fewer cells than folds are left
        out of that group's score and counted in ``n_batches_too_small``; a group with fewer
        than two batches left is not scored (``note`` says so).
    n_neighbors
        Neighbours of the kNN classifier.
    n_sample
        Score a seeded random subsample of this many cells (``None``: all cells).
    seed
        Seed of the subsample, the folds and the classifiers.

    Returns
    -------
    Tidy DataFrame with columns ``embedding``, ``classifier``, ``group`` (``"all cells"``, a
    label, or ``"within labels"``), ``balanced_accuracy``, ``chance``, ``n_cells``,
    ``n_batches``, ``n_batches_too_small`` and ``note``.
    """
    check_anndata(adata)
    obsm_keys = check_obsm_keys(adata, obsm_keys)
    check_obs_keys(adata, [batch_key] if label_key is None else [batch_key, label_key])
    bad = [c for c in classifiers if c not in CLASSIFIERS]
    if bad or not classifiers:
        raise ValueError(f"classifiers must be a non-empty subset of {CLASSIFIERS}, got {bad}.")
    if not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}.")
    if not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}.")
    idx = subsample(adata.n_obs, n_sample, seed)
    batches = adata.obs[batch_key].astype(str).to_numpy()[idx]
    labels = None if label_key is None else adata.obs[label_key].astype(str).to_numpy()[idx]
    rows = []
    for key in obsm_keys:
        x = np.asarray(adata.obsm[key], dtype=np.float64)[idx]
        for kind in classifiers:
            base = {"embedding": key, "classifier": kind}
            rows.append(
                {
                    **base,
                    "group": ALL_CELLS,
                    **_score(x, batches, kind, n_splits, n_neighbors, seed),
                }
            )
            if labels is None:
                continue
            per_label = []
            for label in pd.unique(labels):
                cells = labels == label
                per_label.append(
                    {
                        **base,
                        "group": str(label),
                        **_score(x[cells], batches[cells], kind, n_splits, n_neighbors, seed),
                    }
                )
            rows += per_label
            scored = [r for r in per_label if np.isfinite(r["balanced_accuracy"])]
            weights = np.array([r["n_cells"] for r in scored], dtype=float)

            def mean(col: str, scored=scored, weights=weights) -> float:
                if not scored:
                    return np.nan
                return float(np.average([r[col] for r in scored], weights=weights))

            rows.append(
                {
                    **base,
                    "group": "within labels",
                    "balanced_accuracy": mean("balanced_accuracy"),
                    "chance": mean("chance"),
                    "n_cells": int(weights.sum()),
                    "n_batches": len(set(batches)),
                    "n_batches_too_small": 0,
                    "note": f"cell-weighted mean over {len(scored)} of {len(per_label)} labels",
                }
            )
    return pd.DataFrame(rows)
