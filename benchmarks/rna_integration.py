"""Integration quality on the real scRNA sets: scIB metrics of ARMED against the usual tools.

For each dataset in ../shared/data (2,000 batch-aware HVGs, the same cells and genes for every
method) and each seed, embeds the cells with

- ``pca``: uncorrected PCA of log-normalised counts (30 components; also PCR's baseline),
- ``harmony``: harmonypy on that PCA,
- ``scvi``: ``scvi.model.SCVI`` with its defaults (10-d, its own epoch heuristic),
- ``scanvi``: ``SCANVI.from_scvi_model`` of that scVI with every label given (its defaults),
- ``armed_fixed``: ``ArmedRNA(mode="fixed")``, the scMEDAL-FE-style adversarial autoencoder,
- ``armed``: full ``ArmedRNA`` (its FE latent),

then scores every embedding with the scIB suite (``armed_bio.metrics.scib``) and scMEDAL's
cluster scores (``armed_bio.metrics.cluster_scores``). Variants for tuning are written
``armed@adversary_scale=0.03,adversary_objective=confusion`` (model keyword arguments;
``max_epochs`` and ``batch_size`` go to ``train``, ``lr`` and ``adversary_lr`` to its
``plan_kwargs``).

Embeddings are cached in ``benchmarks/.cache/`` (not committed) so that methods and seeds can
run in parallel processes; scores of each dataset and seed go to
``results/rna_integration_runs/``, the summary (mean and s.d. over seeds) to
``results/rna_integration.{json,md}``.

    .venv/bin/python benchmarks/rna_integration.py embed [--datasets] [--seeds] [--methods]
    .venv/bin/python benchmarks/rna_integration.py score [--datasets ...] [--seeds ...]
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
from _common import DATASETS, RESULTS, load_hvg, machine, write_results

import armed_bio as ab
from armed_bio.model import ArmedRNA

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
CACHE = Path(__file__).resolve().parent / ".cache" / "rna_integration"
RUNS = RESULTS / "rna_integration_runs"
METHODS = ["pca", "harmony", "scvi", "scanvi", "armed_fixed", "armed"]
TOTALS = ("Batch correction", "Bio conservation", "Total")
LABELS = {
    "pca": "PCA (uncorrected)",
    "harmony": "Harmony",
    "scvi": "scVI",
    "scanvi": "scANVI",
    "armed_fixed": "ArmedRNA fixed (scMEDAL-FE)",
    "armed": "ArmedRNA (FE latent)",
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
    if base in ("armed", "armed_fixed"):
        mode = "fixed" if base == "armed_fixed" else kwargs.pop("mode", "mixed")
        train_kwargs = {k: kwargs.pop(k) for k in ("max_epochs", "batch_size") if k in kwargs}
        plan_kwargs = {k: kwargs.pop(k) for k in ("lr", "adversary_lr") if k in kwargs}
        if plan_kwargs:
            train_kwargs["plan_kwargs"] = plan_kwargs
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
        return out, facts
    raise ValueError(f"unknown method {spec!r}; choose from {METHODS} (armed ones take @k=v).")


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


def run_score(datasets, seeds) -> None:
    for dataset in datasets:
        adata = load_hvg(dataset)
        for seed in seeds:
            files = sorted((CACHE / dataset).glob(f"*__seed{seed}.npz"))
            if not any(f.name.startswith("pca__") for f in files):
                raise FileNotFoundError(f"embed pca for {dataset} seed {seed} first")
            facts, scib_keys, cluster_keys = {}, [], []
            for f in files:
                spec = f.name.split("__seed")[0]
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
            payload = {
                "dataset": dataset,
                "seed": seed,
                "n_obs": adata.n_obs,
                "n_vars": adata.n_vars,
                "scib": table.to_dict(orient="records"),
                "cluster_scores": clusters.reset_index().to_dict(orient="records"),
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


def merge_runs(old: dict, new: dict) -> dict:
    """Scores of ``new`` replace those of the same embeddings in ``old``; the rest of ``old`` stays.

    Every scIB metric and cluster score is computed per embedding (raw, not min-max scaled across
    methods), so a variant scored later is comparable with the methods scored before it.
    """
    scored = {r["embedding"] for r in new["scib"]} | {r["embedding"] for r in new["cluster_scores"]}
    merged = dict(new)
    for part in ("scib", "cluster_scores"):
        merged[part] = [r for r in old[part] if r["embedding"] not in scored] + new[part]
    merged["facts"] = {**{k: v for k, v in old["facts"].items() if k not in scored}, **new["facts"]}
    return merged


def collect() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    scib_rows, cluster_rows, fact_rows = [], [], []
    for f in sorted(RUNS.glob("*.json")):
        run = json.loads(f.read_text())
        tag = {"dataset": run["dataset"], "seed": run["seed"]}
        scib_rows += [{**tag, **r} for r in run["scib"]]
        cluster_rows += [{**tag, **r} for r in run["cluster_scores"]]
        fact_rows += [{**tag, "embedding": k, **v} for k, v in run["facts"].items()]
    return pd.DataFrame(scib_rows), pd.DataFrame(cluster_rows), pd.DataFrame(fact_rows)


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


def run_report() -> None:
    scib_df, cluster_df, facts_df = collect()
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
        secs = facts_df[facts_df["dataset"] == dataset].groupby("embedding")["seconds"].mean()
        lines.append(
            "\nFit seconds, mean over seeds (scANVI: its scVI included): "
            + ", ".join(f"{label(k)} {v:.0f}" for k, v in secs.items())
            + "\n"
        )
    payload = {
        "scib": scib_df.to_dict(orient="records"),
        "cluster_scores": cluster_df.to_dict(orient="records"),
        "facts": facts_df.to_dict(orient="records"),
        "summary": summary,
        "machine": machine(),
    }
    write_results("rna_integration", payload, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["embed", "score", "report", "all"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.step in ("embed", "all"):
        run_embed(args.datasets, args.seeds, args.methods)
    if args.step in ("score", "all"):
        run_score(args.datasets, args.seeds)
    if args.step in ("report", "all"):
        run_report()


if __name__ == "__main__":
    main()
