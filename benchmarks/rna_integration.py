"""Integration quality on the real scRNA sets: scIB metrics of ARMED against the usual tools.

For each dataset in ../shared/data (2,000 batch-aware HVGs, the same cells and genes for every
method) and each seed, embeds the cells with

- ``pca``: uncorrected PCA of log-normalised counts (30 components; also PCR's baseline),
- ``harmony``: harmonypy on that PCA,
- ``scvi``: ``scvi.model.SCVI`` with its defaults (10-d, its own epoch heuristic),
- ``scanvi``: ``SCANVI.from_scvi_model`` of that scVI with every label given (its defaults),
- ``armed_fixed``: ``ArmedRNA(mode="fixed")``, the scMEDAL-FE-style adversarial autoencoder,
- ``armed_v1``: full ``ArmedRNA`` with the first release's defaults (``_common.V1``),
- ``armed_v2``: full ``ArmedRNA`` with the 0.3-0.6 defaults (``_common.V2``),
- ``armed_v3``: full ``ArmedRNA`` with the 0.7-0.11 defaults (``_common.V3``),
- ``armed_v4``: full ``ArmedRNA`` with the 0.12 defaults (``_common.V4``),
- ``armed``: full ``ArmedRNA`` with today's defaults (v5, 0.13.0; its FE latent),

then scores every embedding with the scIB suite (``armed_bio.metrics.scib``), scMEDAL's
cluster scores (``armed_bio.metrics.cluster_scores``) and the batch-predictability probe
(``armed_bio.metrics.batch_predictability``: a fresh classifier's balanced accuracy at telling
the batch, over all cells and within cell types). Variants for tuning are written
``armed@adversary_scale=0.03,adversary_objective=confusion`` (model keyword arguments;
``min_epochs`` sets the default epochs' floor;
``max_epochs`` and ``batch_size`` go to ``train``; ``lr``, ``adversary_lr``,
``random_effects_lr``, ``adversary_lr_end`` and ``warmup_fraction`` to its ``plan_kwargs``);
``armed_v1@...`` starts from the v1 defaults (``armed_v2@`` to ``armed_v4@`` likewise).

Datasets: the shared real sets, and ``kang_thinned``, a semi-synthetic set (Kang's real counts
split into 5 simulated batches with known per-gene effects and a skewed cell-type mix, see
``_common.SEMI_SYNTHETIC``). On it, each ArmedRNA run also measures effect recovery against
the truth: the per-gene effect of each batch (its counterfactual minus the batch-free
decode) against the true one (r and slope), and the batch-free decode's pseudobulks (cell type
x donor) against those of the untouched counts.

Embeddings are cached in ``benchmarks/.cache/`` (not committed) so that methods and seeds can
run in parallel processes; scores of each dataset and seed go to
``results/rna_integration_runs/``, the summary (mean and s.d. over seeds) to
``results/rna_integration.{json,md}``. ``score --methods`` scores only those cached embeddings
(and ``pca``, the PCR reference) and merges them into the runs.

    .venv/bin/python benchmarks/rna_integration.py embed [--datasets] [--seeds] [--methods]
    .venv/bin/python benchmarks/rna_integration.py score [--datasets] [--seeds] [--methods]
    .venv/bin/python benchmarks/rna_integration.py kmeans [--datasets] [--seeds] [--methods]
    .venv/bin/python benchmarks/rna_integration.py report
    .venv/bin/python benchmarks/rna_integration.py all      # the three in turn, every default
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
import torch
from _common import (
    DATASETS,
    RESULTS,
    SEMI_SYNTHETIC,
    V1,
    V2,
    V3,
    V4,
    load_hvg,
    machine,
    release_train_kwargs,
    write_results,
)

import armed_bio as ab
from armed_bio.metrics._scib import KMEANS_METRICS, with_kmeans
from armed_bio.model import ArmedRNA

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
CACHE = Path(__file__).resolve().parent / ".cache" / "rna_integration"
RUNS = RESULTS / "rna_integration_runs"
METHODS = [
    "pca",
    "harmony",
    "scvi",
    "scanvi",
    "armed_fixed",
    "armed_v1",
    "armed_v2",
    "armed_v3",
    "armed_v4",
    "armed",
]
#: The earlier releases' defaults (``armed_vN``), on top of today's.
RELEASES = {"armed_v1": V1, "armed_v2": V2, "armed_v3": V3, "armed_v4": V4}
TOTALS = ("Batch correction", "Bio conservation", "Total")
# Which change did what: v1, v1 plus each v2 change, v2, v2 less each, v2 plus each v3
# change, v3, v3 plus the v4 change, v4 plus each v5 change, and the changes not kept (see
# ablation_table).
ABLATION = [
    ("v1 (first release)", "armed_v1"),
    ("v1 + centred random effects", "armed_v1@centre_random_effects=true"),
    ("v1 + cluster-conditional adversary", "armed_v1@adversary_clusters=5"),
    ("v1 + lambda_F 0.1", "armed_v1@fe_reconstruction_weight=0.1"),
    ("v2 (all three)", "armed_v2"),
    ("v2 - centring", "armed_v2@centre_random_effects=false"),
    ("v2 - cluster conditioning", "armed_v2@adversary_clusters=0"),
    ("v2 - lambda_F 0.1 (back to 0.2)", "armed_v2@fe_reconstruction_weight=0.2"),
    ("v2 + 75-epoch floor (= v3 - weaker adversary)", "armed_v2@min_epochs=75"),
    ("v2 + adversary_scale 0.0075 (= v3 - epoch floor)", "armed_v2@adversary_scale=0.0075"),
    ("v3 (both)", "armed_v3"),
    ("v3 + adversary lr ramp to 0.01 (= v4)", "armed_v4"),
    ("v3 + adversary lr ramp to 0.01 (v4, an earlier run)", "armed_v3@adversary_lr_end=0.01"),
    ("v3 + constant adversary lr 0.01 (not kept)", "armed_v3@adversary_lr=0.01"),
    ("v3 + batch-centred adversary clusters (not kept)", "armed_v3@centre_adversary_clusters=true"),
    ("v4 + 256-unit adversary (= v5 - slower start)", "armed@adversary_lr=0.001"),
    ("v4 + adversary lr ramp from 3e-4 (= v5 - wider adversary)", "armed_v4@adversary_lr=0.0003"),
    ("v5 (both)", "armed"),
    (
        "v4 + 256-unit, 2-layer adversary (not kept)",
        "armed@adversary_layers=2,adversary_lr=0.001",
    ),
    ("v1 + variational z_FE (not kept)", "armed_v1@latent_kl_weight=1.0"),
    (
        "v2 + variational z_FE (not kept)",
        "armed_v1@adversary_clusters=5,centre_random_effects=true,"
        "fe_reconstruction_weight=0.1,latent_kl_weight=1.0",
    ),
    (
        "v1 + centring + output effects in the Z = 0 reconstruction, lambda_F 1 (not kept)",
        "armed_v1@centre_random_effects=true,fe_reconstruction_effects=output,"
        "fe_reconstruction_weight=1.0",
    ),
]
# The per-embedding score lists of a run file.
PARTS = ("scib", "cluster_scores", "batch_predictability", "kmeans_restarts")
# scib-metrics scores KMeans NMI/ARI on one k-means start, which can stop in a local minimum
# (on kang_thinned even the uncorrected PCA: NMI 0.69 with one start, 0.95 with ten); the
# report also gives every score with the best of this many starts.
KMEANS_N_INIT = 10
LABELS = {
    "pca": "PCA (uncorrected)",
    "harmony": "Harmony",
    "scvi": "scVI",
    "scanvi": "scANVI",
    "armed_fixed": "ArmedRNA fixed (scMEDAL-FE)",
    "armed_v1": "ArmedRNA v1 defaults (FE latent)",
    "armed_v2": "ArmedRNA v2 defaults (FE latent)",
    "armed_v3": "ArmedRNA v3 defaults (FE latent)",
    "armed_v4": "ArmedRNA v4 defaults (FE latent)",
    "armed": "ArmedRNA v5 defaults (FE latent)",
}
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}


def parse_method(spec: str) -> tuple[str, dict]:
    """``armed@a=1,b=x`` -> ("armed", {"a": 1, "b": "x"})."""
    base, _, rest = spec.partition("@")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return base, kwargs


def cache_path(dataset: str, spec: str, seed: int) -> Path:
    return CACHE / dataset / f"{spec}__seed{seed}.npz"


def pca_of(adata, seed: int) -> np.ndarray:
    tmp = adata.copy()
    ab.pp.log_pca(tmp, n_comps=30, seed=seed)
    return tmp.obsm["X_pca"]


def embed(adata, spec: str, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Embeddings of one method (``.obsm`` key -> array) and its run facts."""
    base, kwargs = parse_method(spec)
    a = adata.copy()
    if base == "pca":
        return {"X": pca_of(a, seed)}, {}
    if base == "harmony":
        import harmonypy

        x = pca_of(a, seed)
        ho = harmonypy.run_harmony(x, a.obs, ["batch"], random_state=seed, verbose=False)
        z = np.asarray(ho.Z_corr)
        return {"X": z.T if z.shape[0] != a.n_obs else z}, {}
    if base in ("scvi", "scanvi"):
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(a, batch_key="batch")
        model = scvi.model.SCVI(a, **kwargs)
        t0 = time.perf_counter()
        model.train(**QUIET)
        facts = {
            "scvi_epochs": len(model.history["elbo_train"]),
            "scvi_seconds": time.perf_counter() - t0,
        }
        if base == "scvi":
            return {"X": model.get_latent_representation()}, facts
        # scANVI starts from this scVI; its cache also saves the scVI latent (as "scvi").
        facts["scvi_latent"] = True
        a.obs["labels_given"] = a.obs["cell_type"].astype(str)
        scanvi = scvi.model.SCANVI.from_scvi_model(
            model, unlabeled_category="Unknown", labels_key="labels_given"
        )
        scanvi.train(**QUIET)
        facts["scanvi_epochs"] = len(scanvi.history["elbo_train"])
        return {
            "X": scanvi.get_latent_representation(),
            "X_scvi": model.get_latent_representation(),
        }, facts
    if base in ("armed", "armed_fixed", *RELEASES):
        kwargs = {**RELEASES.get(base, {}), **kwargs}
        mode = "fixed" if base == "armed_fixed" else kwargs.pop("mode", "mixed")
        train_kwargs = {k: kwargs.pop(k) for k in ("max_epochs", "batch_size") if k in kwargs}
        release = release_train_kwargs(kwargs, a.n_obs, train_kwargs.get("batch_size", 128))
        train_kwargs = {**release, **train_kwargs}  # a given max_epochs wins
        labels = kwargs.pop("labels", False)
        ArmedRNA.setup_anndata(a, batch_key="batch", labels_key="cell_type" if labels else None)
        model = ArmedRNA(a, mode=mode, seed=seed, **kwargs)
        model.train(seed=seed, **train_kwargs, **QUIET)
        out = {"X": model.get_latent_representation(kind="fe")}
        if model.module.has_random_encoder:
            out["X_re"] = model.get_latent_representation(kind="re")
        facts = {
            "epochs": model.train_params_["epochs_trained"],
            "final_adversary_ce": float(model.history["adversary_ce_train"].iloc[-1, 0]),
            "ln_n_batches": float(np.log(a.obs["batch"].nunique())),
        }
        if "true_batch_effect" in a.varm and mode == "mixed":
            facts["recovery"] = effect_recovery(model, a)
        return out, facts
    raise ValueError(f"unknown method {spec!r}; choose from {METHODS} (armed ones take @k=v).")


def _pseudobulk(values: np.ndarray, groups: pd.Series) -> np.ndarray:
    """Log of each group's mean expression proportions (rows: groups)."""
    codes = pd.Categorical(groups).codes
    sums = np.stack([values[codes == g].mean(0) for g in range(codes.max() + 1)])
    return np.log(sums / sums.sum(1, keepdims=True) + 1e-8)


def _centred_r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef((a - a.mean(0)).ravel(), (b - b.mean(0)).ravel())[0, 1])


def effect_recovery(model, adata) -> dict:
    """Per-gene batch effects and batch-free expression against a semi-synthetic truth.

    For each batch ``k``: the mean over cells of ``log(as batch k) - log(batch-free)``, each
    minus its mean over genes (the library), against the true per-gene log effect
    (centred over batches; also minus its mean over genes): Pearson r and least-squares slope.
    Slope 1 means the effects come out at their true size *measured from the batch-free
    decode*, which is what a counterfactual reports. Batch-free: pseudobulks (cell type x
    donor) of the batch-free decode against those of the untouched counts, each gene centred
    (r), next to the same for the observed, thinned counts.
    """
    truth = adata.varm["true_batch_effect"]
    free = model.get_counterfactual_expression(adata, batch=None).to_numpy()
    log_free = np.log(free)
    per_batch = {}
    for k, name in enumerate(adata.obs["batch"].cat.categories):
        as_k = model.get_counterfactual_expression(adata, batch=name).to_numpy()
        lfc = (np.log(as_k) - log_free).mean(0)
        est, true = lfc - lfc.mean(), truth[:, k] - truth[:, k].mean()
        per_batch[name] = {
            "r": float(np.corrcoef(est, true)[0, 1]),
            "slope": float(np.dot(est, true) / np.dot(true, true)),
        }
    groups = adata.obs["cell_type"].astype(str) + "|" + adata.obs["source_batch"].astype(str)
    truth_pb = _pseudobulk(_proportions(adata.layers["truth"]), groups)
    return {
        "per_batch": per_batch,
        "effect_r": float(np.mean([v["r"] for v in per_batch.values()])),
        "effect_slope": float(np.mean([v["slope"] for v in per_batch.values()])),
        "batch_free_r": _centred_r(truth_pb, _pseudobulk(free, groups)),
        "observed_r": _centred_r(truth_pb, _pseudobulk(_proportions(adata.X), groups)),
    }


def _proportions(counts) -> np.ndarray:
    dense = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=float)
    return dense / np.maximum(dense.sum(1, keepdims=True), 1.0)


def run_embed(datasets, seeds, methods) -> None:
    for dataset in datasets:
        adata = load_hvg(dataset)
        for seed in seeds:
            # scANVI first: it saves the scVI it starts from, so scVI is not fitted twice.
            for spec in sorted(methods, key=lambda m: m != "scanvi"):
                path = cache_path(dataset, spec, seed)
                if path.exists():
                    continue
                t0 = time.perf_counter()
                arrays, facts = embed(adata, spec, seed)
                facts["seconds"] = time.perf_counter() - t0
                path.parent.mkdir(parents=True, exist_ok=True)
                if "X_scvi" in arrays:  # the scVI that scANVI started from: no second fit
                    np.savez(
                        cache_path(dataset, "scvi", seed),
                        X=arrays.pop("X_scvi"),
                        facts=json.dumps({**facts, "seconds": facts["scvi_seconds"]}),
                    )
                np.savez(path, facts=json.dumps(facts), **arrays)
                print(f"{dataset} seed {seed} {spec}: {facts}", flush=True)


def run_score(datasets, seeds, methods=None) -> None:
    """Score the cached embeddings (only ``methods`` and ``pca`` when given; merged in)."""
    for dataset in datasets:
        adata = load_hvg(dataset)
        for seed in seeds:
            files = sorted((CACHE / dataset).glob(f"*__seed{seed}.npz"))
            if not any(f.name.startswith("pca__") for f in files):
                raise FileNotFoundError(f"embed pca for {dataset} seed {seed} first")
            facts, scib_keys, cluster_keys = {}, [], []
            for f in files:
                spec = f.name.split("__seed")[0]
                if methods is not None and spec not in {"pca", *methods}:
                    continue
                data = np.load(f)
                facts[spec] = json.loads(str(data["facts"]))
                adata.obsm[spec] = data["X"]
                scib_keys.append(spec)
                cluster_keys.append(spec)
                if "X_re" in data:
                    adata.obsm[f"{spec}:re"] = data["X_re"]
                    cluster_keys.append(f"{spec}:re")
            t0 = time.perf_counter()
            table = ab.metrics.scib(
                adata, scib_keys, "batch", "cell_type", pre_integrated_key="pca"
            )
            clusters = ab.metrics.cluster_scores(adata, cluster_keys, "batch", "cell_type")
            probe = ab.metrics.batch_predictability(
                adata, scib_keys, "batch", "cell_type", seed=seed
            )
            restarts = kmeans_rows(adata, scib_keys)
            payload = {
                "dataset": dataset,
                "seed": seed,
                "n_obs": adata.n_obs,
                "n_vars": adata.n_vars,
                "scib": table.to_dict(orient="records"),
                "cluster_scores": clusters.reset_index().to_dict(orient="records"),
                "batch_predictability": probe.to_dict(orient="records"),
                "kmeans_restarts": restarts,
                "facts": facts,
                "score_seconds": time.perf_counter() - t0,
                "machine": machine(),
            }
            out = RUNS / f"{dataset}__seed{seed}.json"
            if out.exists():  # keep earlier scores of embeddings no longer in the cache
                payload = merge_runs(json.loads(out.read_text()), payload)
            RUNS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(payload, indent=2))
            wide = table.pivot(index="embedding", columns="metric", values="value")
            print(dataset, seed, wide[list(TOTALS)], flush=True)


def kmeans_rows(adata, keys: list[str]) -> list[dict]:
    """KMeans NMI/ARI of each embedding with :data:`KMEANS_N_INIT` starts (best inertia)."""
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    return [
        {
            "embedding": key,
            "n_init": KMEANS_N_INIT,
            **ab.metrics.kmeans_nmi_ari(adata.obsm[key], labels, KMEANS_N_INIT),
        }
        for key in keys
    ]


def run_kmeans(datasets, seeds, methods=None) -> None:
    """Add the best-of-n k-means scores of cached, already scored embeddings to their runs."""
    for dataset in datasets:
        adata = load_hvg(dataset)
        for seed in seeds:
            out = RUNS / f"{dataset}__seed{seed}.json"
            run = json.loads(out.read_text())
            scored = {r["embedding"] for r in run["scib"]}
            keys = []
            for f in sorted((CACHE / dataset).glob(f"*__seed{seed}.npz")):
                spec = f.name.split("__seed")[0]
                if spec in scored and (methods is None or spec in {"pca", *methods}):
                    adata.obsm[spec] = np.load(f)["X"]
                    keys.append(spec)
            rows = kmeans_rows(adata, keys)
            old = [r for r in run.get("kmeans_restarts", []) if r["embedding"] not in keys]
            run["kmeans_restarts"] = old + rows
            out.write_text(json.dumps(run, indent=2))
            print(dataset, seed, {r["embedding"]: round(r["KMeans NMI"], 3) for r in rows})


def merge_runs(old: dict, new: dict) -> dict:
    """Scores of ``new`` replace those of the same embeddings in ``old``; the rest of ``old`` stays.

    Every scIB metric and cluster score is computed per embedding (raw, not min-max scaled across
    methods), so a variant scored later is comparable with the methods scored before it.
    """
    scored = {r["embedding"] for r in new["scib"]} | {r["embedding"] for r in new["cluster_scores"]}
    merged = dict(new)
    for part in PARTS:
        merged[part] = [r for r in old.get(part, []) if r["embedding"] not in scored] + new[part]
    merged["facts"] = {**{k: v for k, v in old["facts"].items() if k not in scored}, **new["facts"]}
    return merged


def collect() -> dict[str, pd.DataFrame]:
    """Every run's scores as one frame per part (plus ``facts``), tagged by dataset and seed."""
    rows: dict[str, list] = {part: [] for part in (*PARTS, "facts")}
    for f in sorted(RUNS.glob("*.json")):
        run = json.loads(f.read_text())
        tag = {"dataset": run["dataset"], "seed": run["seed"]}
        for part in PARTS:
            rows[part] += [{**tag, **r} for r in run.get(part, [])]
        rows["facts"] += [{**tag, "embedding": k, **v} for k, v in run["facts"].items()]
    return {part: pd.DataFrame(r) for part, r in rows.items()}


def fmt(mean: float, sd: float) -> str:
    return f"{mean:.3f}" if np.isnan(sd) or sd == 0 else f"{mean:.3f} ± {sd:.3f}"


def label(embedding: str) -> str:
    return LABELS.get(embedding, embedding)


def order(embedding: str) -> tuple:
    """Main methods in METHODS order, then tuning variants by name."""
    base = embedding.partition("@")[0]
    return (embedding != base, METHODS.index(base) if base in METHODS else 99, embedding)


def winners(sub: pd.DataFrame, main: list[str]) -> tuple[dict, list[str]]:
    """Per total: the best main method, its margin over the next, and ArmedRNA's gap."""
    summary, lines = {}, []
    for total in TOTALS:
        mean = {e: sub.loc[(e, total), "mean"] for e in main}
        ranked = sorted(main, key=lambda e: -mean[e])
        best, second = ranked[0], ranked[1]
        gap = mean["armed"] - mean[best] if "armed" in mean else float("nan")
        summary[total] = {
            "winner": best,
            "runner_up": second,
            "margin": mean[best] - mean[second],
            "armed_minus_winner": gap,
            "ranking": {e: mean[e] for e in ranked},
        }
        line = (
            f"- {total}: **{label(best)}** {mean[best]:.3f}, ahead of {label(second)} by "
            f"{mean[best] - mean[second]:.3f}"
        )
        if best != "armed" and "armed" in mean:
            line += f"; ArmedRNA {gap:+.3f} from the winner"
        lines.append(line)
    return summary, lines


def cluster_table(cluster_df: pd.DataFrame) -> list[str]:
    cols = [c for c in cluster_df.columns if c not in ("embedding", "dataset", "seed")]
    stats = cluster_df.groupby("embedding")[cols].agg(["mean", "std"])
    lines = ["| embedding | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for emb in sorted(stats.index, key=order):
        cells = [fmt(stats.loc[emb, (c, "mean")], stats.loc[emb, (c, "std")]) for c in cols]
        lines.append(f"| {label(emb)} | " + " | ".join(cells) + " |")
    return lines


def probe_table(probe_df: pd.DataFrame) -> list[str]:
    """Batch predictability: balanced accuracy, over all cells and within cell types."""
    probe_df = probe_df[probe_df["group"].isin(["all cells", "within labels"])]
    stats = probe_df.groupby(["embedding", "group", "classifier"])["balanced_accuracy"].agg(
        ["mean", "std"]
    )
    cols = [(g, c) for g in ("all cells", "within labels") for c in ("linear", "knn")]
    chance = probe_df["chance"].iloc[0]
    lines = [
        f"| embedding | {' | '.join(f'{g}, {c}' for g, c in cols)} |",
        "|---|" + "---|" * len(cols),
    ]
    for emb in sorted(stats.index.get_level_values(0).unique(), key=order):
        cells = [fmt(*stats.loc[(emb, g, c)]) for g, c in cols]
        lines.append(f"| {label(emb)} | " + " | ".join(cells) + " |")
    return [*lines, f"\nChance: {chance:.3f}.\n"]


def recovery_table(facts_df: pd.DataFrame) -> list[str]:
    """Effect recovery of ArmedRNA runs against a semi-synthetic truth."""
    if "recovery" not in facts_df:
        return []
    rec = facts_df.dropna(subset=["recovery"])
    if rec.empty:
        return []
    keys = ("effect_r", "effect_slope", "batch_free_r", "observed_r")
    rows = pd.DataFrame(
        [
            {"embedding": e, **{k: r[k] for k in keys}}
            for e, r in zip(rec["embedding"], rec["recovery"], strict=True)
        ]
    )
    stats = rows.groupby("embedding")[list(keys)].agg(["mean", "std"])
    lines = [
        "\nEffect recovery against the truth (per-gene effect of each batch, as batch k minus "
        "batch-free, vs the true one: r and slope, mean over batches; batch-free pseudobulks "
        "(cell type x donor) vs the untouched counts' (r), next to the observed counts'):\n",
        "| embedding | effect r | effect slope | batch-free r | observed counts r |",
        "|---|---|---|---|---|",
    ]
    for emb in sorted(stats.index, key=order):
        lines.append(
            f"| {label(emb)} | " + " | ".join(fmt(*stats.loc[emb, k]) for k in keys) + " |"
        )
    return lines


def ablation_table(scib_df: pd.DataFrame, probe_df: pd.DataFrame, seed: int = 0) -> list[str]:
    """Which change did what: the :data:`ABLATION` rows run on this dataset, one seed."""
    scores = scib_df[scib_df["seed"] == seed].set_index(["embedding", "metric"])["value"]
    probe = probe_df[(probe_df["seed"] == seed) & (probe_df["group"] == "within labels")]
    probe = probe.set_index(["embedding", "classifier"])["balanced_accuracy"]
    lines = [
        f"\nAblation, seed {seed} (v1 plus each change, v2 less each, v2 plus each v3 change, "
        "v3 plus the v4 change, v4 plus each v5 change and those not kept):\n",
        "| what | spec | Total | Batch correction | Bio conservation | KBET "
        "| within labels, knn | within labels, linear |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for what, spec in ABLATION:
        if (spec, "Total") not in scores.index:
            continue
        cells = [
            f"{scores[(spec, m)]:.3f}"
            for m in ("Total", "Batch correction", "Bio conservation", "KBET")
        ]
        cells += [f"{probe.get((spec, c), float('nan')):.3f}" for c in ("knn", "linear")]
        lines.append(f"| {what} | `{spec}` | " + " | ".join(cells) + " |")
    return lines if len(lines) > 4 else []


def restarts_table(scib_df: pd.DataFrame, kmeans_df: pd.DataFrame, dataset: str) -> list[str]:
    """Aggregates with KMeans NMI/ARI from the best of :data:`KMEANS_N_INIT` starts."""
    if kmeans_df.empty or not (kmeans_df["dataset"] == dataset).any():
        return []
    scib_df = scib_df[scib_df["dataset"] == dataset]
    kmeans_df = kmeans_df[kmeans_df["dataset"] == dataset]
    rows = []
    for (seed, emb), scores in kmeans_df.groupby(["seed", "embedding"]):
        one = scib_df[(scib_df["seed"] == seed) & (scib_df["embedding"] == emb)]
        best = scores.iloc[0][list(KMEANS_METRICS)].to_dict()
        many = with_kmeans(one, {emb: best}).set_index("metric")["value"]
        one = one.set_index("metric")["value"]
        rows.append(
            {
                "embedding": emb,
                "Total, 1 start": one["Total"],
                **{f"{m}, {KMEANS_N_INIT} starts": many[m] for m in KMEANS_METRICS},
                **{f"{m}, {KMEANS_N_INIT} starts": many[m] for m in TOTALS[1:]},
            }
        )
    table = pd.DataFrame(rows)
    cols = [c for c in table.columns if c != "embedding"]
    stats = table.groupby("embedding")[cols].agg(["mean", "std"])
    counts = table.groupby("embedding").size()
    lines = [
        f"\nThe same scores with KMeans NMI/ARI from the best (lowest inertia) of "
        f"{KMEANS_N_INIT} k-means starts instead of scib-metrics' one "
        "(`armed_bio.metrics.scib(..., kmeans_n_init=10)`); embeddings re-embedded since "
        "this was added:\n",
        "| embedding | n | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for emb in sorted(stats.index, key=order):
        cells = [fmt(stats.loc[emb, (c, "mean")], stats.loc[emb, (c, "std")]) for c in cols]
        lines.append(f"| {label(emb)} | {counts[emb]} | " + " | ".join(cells) + " |")
    return lines


def plot_summary(stats: pd.DataFrame, probe_df: pd.DataFrame) -> None:
    """The main methods' scIB Total and within-label batch probe, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(stats.index.get_level_values(0).unique())
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.6 * len(datasets), 6.4), squeeze=False)
    probe = probe_df[probe_df["group"] == "within labels"]
    for j, dataset in enumerate(datasets):
        sub = stats.loc[dataset]
        main = [m for m in METHODS if (m, "Total") in sub.index]
        mean = [sub.loc[(m, "Total"), "mean"] for m in main]
        sd = [np.nan_to_num(sub.loc[(m, "Total"), "std"]) for m in main]
        ax = axes[0, j]
        ax.barh(range(len(main)), mean, xerr=sd, color="#4c72b0")
        ax.set(yticks=range(len(main)), yticklabels=[label(m) for m in main], title=dataset)
        ax.set_xlim(min(mean) - 0.03, max(mean) + 0.02)
        ax.set_xlabel("scIB Total, mean ± s.d. over seeds")
        ax.invert_yaxis()
        ax = axes[1, j]
        pr = probe[(probe["dataset"] == dataset) & probe["embedding"].isin(main)]
        for k, kind in enumerate(("linear", "knn")):
            g = pr[pr["classifier"] == kind].groupby("embedding")["balanced_accuracy"].mean()
            rows = [m for m in main if m in g.index]
            ax.barh(
                [main.index(m) + 0.4 * k - 0.2 for m in rows],
                [g[m] for m in rows],
                height=0.4,
                label=kind,
            )
        if not pr.empty:
            ax.axvline(pr["chance"].iloc[0], color="grey", ls="--", lw=0.8, label="chance")
        ax.set(yticks=range(len(main)), yticklabels=[label(m) for m in main])
        ax.set_xlabel("batch probe within labels, balanced acc. (lower: less batch)")
        ax.invert_yaxis()
        ax.legend(frameon=False, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "rna_integration_summary.png", dpi=110)
    plt.close(fig)


def run_report() -> None:
    parts = collect()
    scib_df, cluster_df, facts_df = parts["scib"], parts["cluster_scores"], parts["facts"]
    probe_df, kmeans_df = parts["batch_predictability"], parts["kmeans_restarts"]
    metrics = [m for m in scib_df["metric"].unique() if m not in TOTALS] + list(TOTALS)
    stats = scib_df.groupby(["dataset", "embedding", "metric"])["value"].agg(
        ["mean", "std", "count"]
    )
    lines = [
        "# Integration quality on the real scRNA sets (scIB metrics)\n",
        "2,000 batch-aware seurat_v3 HVGs, the same cells and genes for every method; raw "
        "scib-metrics scores (not min-max scaled), Total = 0.4 batch + 0.6 bio; mean ± s.d. "
        "over seeds (n = seeds). Rows with `@` are tuning variants of ArmedRNA (keyword "
        "arguments). CPU, one torch thread. Command: "
        "`.venv/bin/python benchmarks/rna_integration.py all`.\n",
    ]
    summary = {}
    for dataset in sorted(scib_df["dataset"].unique()):
        sub = stats.loc[dataset]
        embeddings = sorted(sub.index.get_level_values(0).unique(), key=order)
        lines += [
            f"\n## {dataset}\n",
            "| method | n | " + " | ".join(metrics) + " |",
            "|---|---|" + "---|" * len(metrics),
        ]
        for emb in embeddings:
            cells = [fmt(sub.loc[(emb, m), "mean"], sub.loc[(emb, m), "std"]) for m in metrics]
            n = int(sub.loc[(emb, "Total"), "count"])
            lines.append(f"| {label(emb)} | {n} | " + " | ".join(cells) + " |")
        main = [e for e in embeddings if e in METHODS]
        summary[dataset], win_lines = winners(sub, main)
        lines += ["\nWinners among the main methods (mean over seeds):\n", *win_lines]
        lines += [
            "\nscMEDAL cluster scores (batch: lower = better mixed; label: higher = "
            "better separated; `:re` = the RE latent, where the batch should stay):\n"
        ]
        lines += cluster_table(cluster_df[cluster_df["dataset"] == dataset])
        if not probe_df.empty and (probe_df["dataset"] == dataset).any():
            lines += [
                "\nBatch predictability (`armed_bio.metrics.batch_predictability`: 5-fold "
                "balanced accuracy of a fresh classifier predicting the batch from the "
                "standardised embedding; lower = less batch left):\n"
            ]
            lines += probe_table(probe_df[probe_df["dataset"] == dataset])
        lines += restarts_table(scib_df, kmeans_df, dataset)
        lines += recovery_table(facts_df[facts_df["dataset"] == dataset])
        lines += ablation_table(
            scib_df[scib_df["dataset"] == dataset], probe_df[probe_df["dataset"] == dataset]
        )
        secs = facts_df[facts_df["dataset"] == dataset].groupby("embedding")["seconds"].mean()
        lines.append(
            "\nFit seconds, mean over seeds (scANVI: its scVI included): "
            + ", ".join(f"{label(k)} {v:.0f}" for k, v in secs.items())
            + "\n"
        )
    payload = {
        "scib": scib_df.to_dict(orient="records"),
        "cluster_scores": cluster_df.to_dict(orient="records"),
        "batch_predictability": probe_df.to_dict(orient="records"),
        "kmeans_restarts": kmeans_df.to_dict(orient="records"),
        "facts": facts_df.to_dict(orient="records"),
        "summary": summary,
        "machine": machine(),
    }
    write_results("rna_integration", payload, "\n".join(lines) + "\n")
    plot_summary(stats, probe_df)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["embed", "score", "kmeans", "report", "all"])
    parser.add_argument("--datasets", nargs="+", default=[*DATASETS, *SEMI_SYNTHETIC])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    # embed: default METHODS; score: default every cached embedding.
    parser.add_argument("--methods", nargs="+", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.step in ("embed", "all"):
        run_embed(args.datasets, args.seeds, args.methods or METHODS)
    if args.step in ("score", "all"):
        run_score(args.datasets, args.seeds, args.methods)
    if args.step == "kmeans":
        run_kmeans(args.datasets, args.seeds, args.methods)
    if args.step in ("report", "all"):
        run_report()


if __name__ == "__main__":
    main()
