"""The scIB metric suite through scib-metrics (optional extra), as one tidy table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._validation import check_anndata, check_obs_keys, check_obsm_keys
from ._cluster import subsample

# scib-metrics' Benchmarker uses 15, 50 and 90 nearest neighbours.
MIN_CELLS = 91
AGGREGATES = ("Batch correction", "Bio conservation", "Total")
KMEANS_METRICS = ("KMeans NMI", "KMeans ARI")
# scIB's weights of the two aggregates in the Total.
BATCH_WEIGHT, BIO_WEIGHT = 0.4, 0.6


def _benchmarker_classes():
    try:
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "armed_bio.metrics.scib needs scib-metrics: `pip install 'armed_bio[scib]'` "
            "(or `pip install scib-metrics`)."
        ) from err
    return Benchmarker, BatchCorrection, BioConservation


def scib(
    adata: AnnData,
    obsm_keys: Sequence[str],
    batch_key: str,
    label_key: str,
    pre_integrated_key: str = "X_pca",
    n_sample: int | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    progress_bar: bool = False,
    kmeans_n_init: int = 1,
) -> pd.DataFrame:
    """ScIB batch-correction and bio-conservation metrics of each embedding.

    Runs :class:`scib_metrics.benchmark.Benchmarker` with its default metrics (batch
    correction: BRAS (the batch silhouette of scib-metrics >= 0.5), iLISI, kBET per label,
    graph connectivity, PCR comparison; bio conservation: isolated labels, KMeans NMI/ARI,
    silhouette label, cLISI) on a light copy of ``adata``: the AnnData is not modified.
    Scores are not min-max scaled; totals follow scIB: ``0.4 * batch + 0.6 * bio``.

    Parameters
    ----------
    adata
        AnnData holding the embeddings in ``.obsm``.
    obsm_keys
        Embeddings to score, e.g. ``["X_pca", "X_scVI", "X_armed_fe"]``.
    batch_key, label_key
        ``adata.obs`` columns of the batch and of the cell-type labels.
    pre_integrated_key
        ``.obsm`` key of the uncorrected embedding, the baseline of PCR comparison (see
        :func:`armed_bio.pp.log_pca`).
    n_sample
        Score a seeded random subsample of this many cells (``None``: all cells).
    seed
        Seed of the subsample. Neighbour search and k-means use scib-metrics' fixed seeds.
    n_jobs
        Threads for the neighbour search.
    progress_bar
        Show scib-metrics' progress bars.
    kmeans_n_init
        Restarts of the k-means behind KMeans NMI/ARI; the partition of lowest inertia is
        scored. scib-metrics runs one (the default here, for published comparability), which
        can stop in a local minimum that splits a large cell type and merges two small ones
        (on the semi-synthetic kang_thinned the uncorrected PCA scores NMI 0.69 with one start,
        0.95 with ten).
        With more than one, both metrics and the aggregates are recomputed from them.

    Returns
    -------
    Tidy DataFrame, one row per embedding x metric, columns ``embedding``, ``metric_type``
    (``"Batch correction"``, ``"Bio conservation"`` or ``"Aggregate score"``), ``metric``
    and ``value``. Pivot it to embeddings x metrics with
    ``table.pivot(index="embedding", columns="metric", values="value")``, or plot it with
    :func:`armed_bio.pl.metrics`.
    """
    benchmarker, batch_correction, bio_conservation = _benchmarker_classes()
    _check_n_init(kmeans_n_init, "kmeans_n_init")
    check_anndata(adata)
    obsm_keys = check_obsm_keys(adata, obsm_keys)
    check_obsm_keys(adata, [pre_integrated_key], what="pre_integrated_key")
    check_obs_keys(adata, [batch_key, label_key])
    idx = subsample(adata.n_obs, n_sample, seed)
    if len(idx) < MIN_CELLS:
        raise ValueError(
            f"scib needs at least {MIN_CELLS} cells (its neighbourhood metrics use 90 "
            f"neighbours); got {len(idx)}. Use more cells (n_sample=None) or "
            "armed_bio.metrics.cluster_scores for small data."
        )
    for key in (batch_key, label_key):
        n_groups = adata.obs[key].iloc[idx].nunique()
        if n_groups < 2:
            raise ValueError(f"{key!r} has {n_groups} group(s) here; scib needs at least 2.")
    obs = pd.DataFrame(
        {key: adata.obs[key].iloc[idx].astype(str).to_numpy() for key in (batch_key, label_key)},
        index=adata.obs_names[idx],
    )
    keys = list(dict.fromkeys([*obsm_keys, pre_integrated_key]))
    light = AnnData(
        obs=obs,
        obsm={k: np.asarray(adata.obsm[k], dtype=np.float32)[idx] for k in keys},
    )
    bench = benchmarker(
        light,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=obsm_keys,
        bio_conservation_metrics=bio_conservation(),
        batch_correction_metrics=batch_correction(),
        pre_integrated_embedding_obsm_key=pre_integrated_key,
        n_jobs=n_jobs,
        progress_bar=progress_bar,
    )
    bench.benchmark()
    wide = bench.get_results(min_max_scale=False)
    types = wide.loc["Metric Type"]
    wide = wide.drop(index="Metric Type")
    tidy = (
        wide.astype(float)
        .rename_axis(index="embedding", columns="metric")
        .stack()
        .rename("value")
        .reset_index()
    )
    tidy.insert(1, "metric_type", tidy["metric"].map(types).to_numpy())
    if kmeans_n_init > 1:
        tidy = _rescore_kmeans(tidy, light, obsm_keys, label_key, kmeans_n_init)
    return tidy


def _check_n_init(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def kmeans_nmi_ari(x: np.ndarray, labels: np.ndarray, n_init: int = 10) -> dict[str, float]:
    """NMI and ARI of the labels against the k-means partition of an embedding.

    k is the number of labels, as in scIB; of ``n_init`` k-means++ starts (scib-metrics' own
    k-means and fixed seed) the partition of lowest inertia is scored, so ``n_init=1`` gives
    scib-metrics' KMeans NMI/ARI.

    Parameters
    ----------
    x
        Cells x dimensions embedding.
    labels
        One label per cell.
    n_init
        k-means starts.

    Returns
    -------
    ``{"KMeans NMI": ..., "KMeans ARI": ...}``.
    """
    _benchmarker_classes()  # the helpful error when scib-metrics is missing
    _check_n_init(n_init, "n_init")
    if len(x) != len(labels):
        raise ValueError(f"x has {len(x)} rows but labels has {len(labels)}: one label per cell.")
    from scib_metrics.utils import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    kmeans = KMeans(len(np.unique(labels)), n_init=n_init)
    kmeans.fit(np.asarray(x, dtype=np.float32))
    predicted = np.asarray(kmeans.labels_)
    return {
        "KMeans NMI": normalized_mutual_info_score(labels, predicted, average_method="arithmetic"),
        "KMeans ARI": adjusted_rand_score(labels, predicted),
    }


def _rescore_kmeans(
    tidy: pd.DataFrame, light: AnnData, obsm_keys: Sequence[str], label_key: str, n_init: int
) -> pd.DataFrame:
    """Replace KMeans NMI/ARI by their best-of-``n_init`` values and recompute the aggregates."""
    labels = light.obs[label_key].to_numpy()
    scores = {emb: kmeans_nmi_ari(light.obsm[emb], labels, n_init) for emb in obsm_keys}
    return with_kmeans(tidy, scores)


def with_kmeans(tidy: pd.DataFrame, scores: dict[str, dict[str, float]]) -> pd.DataFrame:
    """A copy of a :func:`scib` table with the given KMeans NMI/ARI and aggregates to match.

    ``scores`` maps each embedding to its ``{"KMeans NMI": ..., "KMeans ARI": ...}`` (from
    :func:`kmeans_nmi_ari`); embeddings not in it keep their values. The aggregates follow
    scib-metrics: the mean of each type's metrics, Total ``0.4 * batch + 0.6 * bio``.
    """
    tidy = tidy.copy()
    for emb, values in scores.items():
        rows = tidy["embedding"] == emb
        for metric in KMEANS_METRICS:
            tidy.loc[rows & (tidy["metric"] == metric), "value"] = values[metric]
        means = tidy[rows].groupby("metric_type")["value"].mean()
        aggregates = {key: means[key] for key in ("Batch correction", "Bio conservation")}
        aggregates["Total"] = (
            BATCH_WEIGHT * aggregates["Batch correction"]
            + BIO_WEIGHT * aggregates["Bio conservation"]
        )
        for metric, value in aggregates.items():
            tidy.loc[rows & (tidy["metric"] == metric), "value"] = value
    return tidy
