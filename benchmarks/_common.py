"""Helpers shared by the benchmark scripts: data preparation, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

import anndata as ad
import lightning.pytorch as pl
import numpy as np
import scanpy as sc
import torch

from armed_bio.model._base import default_max_epochs

# The shared real data: $ARMED_BIO_DATA, or ../shared/data beside the checkout.
SHARED = Path(
    os.environ.get("ARMED_BIO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = {
    "kang_pbmc_5donors": "kang_pbmc_5donors.h5ad",
    "cellbench_lung5": "cellbench_lung5.h5ad",
}
# Semi-synthetic sets: real counts split into simulated batches with known effects
# (armed_bio.datasets.thin_into_batches); the real donor/protocol column becomes source_batch.
SEMI_SYNTHETIC = {
    "kang_thinned": {
        "source": "kang_pbmc_5donors",
        "n_batches": 5,
        "effect_sd": 0.5,
        "mix_concentration": 2.0,
        "seed": 0,
    },
}

#: Release settings that go to the training plan (``train(plan_kwargs=...)``), not the model.
PLAN_OPTIONS = ("lr", "adversary_lr", "adversary_lr_end", "random_effects_lr", "warmup_fraction")

# ArmedRNA's 0.12 (v4) values of what 0.13.0 changed: "armed_v4" in the benchmarks is
# ArmedRNA with these (the 64-unit adversary, its learning rate ramped from 1e-3).
V4 = {"adversary_hidden": 64, "adversary_lr": 1e-3}

# ArmedRNA's 0.7-0.11 (v3) values of what 0.12.0 changed: "armed_v3" in the benchmarks is
# ArmedRNA with these (a constant adversary learning rate, no ramp).
V3 = {**V4, "adversary_lr_end": None}

# ArmedRNA's 0.3-0.6 (v2) values of what 0.7.0 changed: "armed_v2" in the benchmarks is
# ArmedRNA with these; "min_epochs" 0 is the default epochs without the 75-epoch floor.
V2 = {**V3, "adversary_scale": 0.01, "min_epochs": 0}


def release_train_kwargs(model_kwargs: dict, n_obs: int, batch_size: int = 128) -> dict:
    """Pop the ``train`` settings of a release (:data:`V2`, :data:`V3`, ...) from ``model_kwargs``.

    Returns ``train``'s keywords: the ``max_epochs`` a release's defaults chose on ``n_obs``
    cells when ``model_kwargs`` names its floor ``min_epochs``, and the
    :data:`PLAN_OPTIONS` as ``plan_kwargs`` (``{}`` when it names neither).
    """
    train: dict = {}
    if "min_epochs" in model_kwargs:
        floor = model_kwargs.pop("min_epochs")
        train["max_epochs"] = default_max_epochs(n_obs, batch_size, min_epochs=floor)
    plan = {k: model_kwargs.pop(k) for k in PLAN_OPTIONS if k in model_kwargs}
    if plan:
        train["plan_kwargs"] = plan
    return train


# ArmedRNA's first-release (v1) values of every argument that the core-model work added or
# changed; "armed_v1" in the benchmarks is ArmedRNA with these.
V1 = {
    **V2,
    "fe_reconstruction_weight": 0.2,
    "fe_reconstruction_effects": "none",
    "adversary_clusters": 0,
    "centre_random_effects": False,
    "latent_kl_weight": 0.0,
}


def load_hvg(name: str, n_top_genes: int = 2000) -> ad.AnnData:
    """A dataset cut to batch-aware seurat_v3 HVGs (the same for every method).

    ``name`` is a shared real dataset or a semi-synthetic one (:data:`SEMI_SYNTHETIC`, built
    from its source with a fixed seed; the untouched counts stay in ``.layers["truth"]``).
    """
    if name in SEMI_SYNTHETIC:
        from armed_bio.datasets import thin_into_batches

        spec = dict(SEMI_SYNTHETIC[name])
        adata = thin_into_batches(ad.read_h5ad(SHARED / DATASETS[spec.pop("source")]), **spec)
    else:
        adata = ad.read_h5ad(SHARED / DATASETS[name])
    if adata.n_vars > n_top_genes:
        hvg = sc.pp.highly_variable_genes(
            adata, n_top_genes=n_top_genes, flavor="seurat_v3", batch_key="batch", inplace=False
        )
        adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    sc.pp.filter_cells(adata, min_counts=1)
    sc.pp.filter_genes(adata, min_cells=1)
    return adata


class EpochTimer(pl.Callback):
    """Wall-clock seconds and minor page faults (the process's) of each training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.page_faults: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._t)
        self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults)


def steady(times: list[float]) -> float:
    """Median epoch time, first epoch (warm-up) excluded when there are more."""
    return float(np.median(times[1:] if len(times) > 1 else times))


def machine() -> dict:
    import scvi

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "scvi_tools": scvi.__version__,
    }


def write_results(stem: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=float))
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)


def train_armed_image(adata: ad.AnnData, default_seed: int, **options) -> tuple:
    """Train ``ArmedImage`` on set-up ``adata`` with ``name=value`` options of the command line.

    Training options go to ``train``, ``seed=N`` replaces ``default_seed``, the rest to the
    model.
    Returns the model, the training seconds and the options as given (with the seed).
    """
    from armed_bio.model import ArmedImage

    train_names = {"max_epochs", "batch_size", "early_stopping", "plan_kwargs"}
    seed = options.pop("seed", default_seed)
    train_kwargs = {k: options.pop(k) for k in train_names & set(options)}
    model = ArmedImage(adata, seed=seed, **options)
    start = time.perf_counter()
    model.train(seed=seed, enable_progress_bar=False, **train_kwargs)
    return model, time.perf_counter() - start, {**options, **train_kwargs, "seed": seed}


def parse_value(value: str):
    """A command-line value as a Python literal (5, 0.1, True), or the string itself."""
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def probe(x: np.ndarray, y: np.ndarray, folds, groups: np.ndarray | None = None) -> float:
    """Balanced accuracy of a fresh logistic regression (standardised input) under ``folds``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(clf, x, y, groups=groups, cv=folds, scoring="balanced_accuracy")
    return float(scores.mean())


def pixel_pca(images: np.ndarray, seed: int, n_components: int = 50) -> np.ndarray:
    """The first ``n_components`` principal components of the flattened raw pixels."""
    from sklearn.decomposition import PCA

    flat = images.reshape(images.shape[0], -1).astype(np.float32)
    return PCA(n_components, random_state=seed).fit_transform(flat)
