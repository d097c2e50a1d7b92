"""Counterfactual expression on simulations with known truth, and its memory bound.

Part 1 (truth): NB counts with cell types and per-batch, per-gene multiplicative effects
(``armed_bio.datasets.simulate_counts``), 8,000 cells x 500 genes x 5 batches; one batch is
held out of training and given its own random effects with ``adapt``. Reported: correlation
between predicted and true batch-free expression, and between predicted and true expression
in another batch (cells moved out of their own batch), each over cells x genes after removing
each gene's mean, next to the naive estimate (the cell's observed, normalised counts); and
the correlation of the predicted per-gene batch effect with the true one.

Part 2 (memory): 100,000 cells x 2,000 genes x 10 batches. Every cell is decoded as every
batch, streamed with ``iter_counterfactual_expression`` (one batch at a time, chunk by chunk),
at three chunk sizes; the peak resident memory above the baseline is sampled every 5 ms. The
reference implementation materialises all batches x cells x genes at once (8 GB here).

Run: ``.venv/bin/python benchmarks/rna_counterfactuals.py`` (about 25 min on one CPU core;
append ``memory`` or ``truth`` to rerun that part only). Before each measurement, freed heap
memory is returned to the OS (``malloc_trim``) so the call's own allocations show in the peak.
Writes ``benchmarks/results/rna_counterfactuals.{json,md}``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import sys
import threading
import time

import numpy as np
import torch
from _common import RESULTS, V1, V2, V3, V4, machine, release_train_kwargs, write_results

from armed_bio.datasets import simulate_counts
from armed_bio.model import ArmedRNA

SEED = 0
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}


def centred_corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef((a - a.mean(0)).ravel(), (b - b.mean(0)).ravel())[0, 1])


def log_expression(frame) -> np.ndarray:
    values = frame.to_numpy()
    return np.log(values / values.sum(1, keepdims=True))


def effect_fit(estimated: np.ndarray, true: np.ndarray) -> dict:
    """Pearson r and least-squares slope (through 0) of estimated on true per-gene effects.

    Both are centred over genes first: a shift common to every gene is library size.
    """
    est, tru = estimated - estimated.mean(), true - true.mean()
    return {
        "effect_r": float(np.corrcoef(est, tru)[0, 1]),
        "effect_slope": float(np.dot(est, tru) / np.dot(tru, tru)),
    }


def truth_check(model_kwargs: dict, plot: bool = False) -> dict:
    """Train on four batches (``model_kwargs`` on top of the defaults), adapt the fifth.

    The true effect of batch ``k`` is measured from the seen batches' average, the only
    reference the training data define (the simulator centres its effects over all five).
    """
    adata = simulate_counts(
        n_cells=8000, n_genes=500, n_batches=5, n_cell_types=6, batch_effect_sd=0.5, seed=SEED
    )
    held_out = "batch_4"
    ref = adata[adata.obs["batch"] != held_out].copy()
    query = adata[adata.obs["batch"] == held_out].copy()
    ArmedRNA.setup_anndata(ref, batch_key="batch")
    settings, model_kwargs = dict(model_kwargs), dict(model_kwargs)
    train_kwargs = release_train_kwargs(model_kwargs, ref.n_obs)
    model = ArmedRNA(ref, seed=SEED, **model_kwargs)
    model.train(seed=SEED, **train_kwargs, **QUIET)
    adapted = model.adapt(query, seed=SEED, progress_bar=False)

    categories = list(adata.obs["batch"].cat.categories)
    effect = adata.varm["true_batch_effect"]
    seen = [k for k, name in enumerate(categories) if name != held_out]
    effect = effect - effect[:, seen].mean(1, keepdims=True)
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    batches = adata.obs["batch"].cat.codes.to_numpy()
    true_free = adata.varm["true_log_profile"].T[types]
    counts = adata.X.toarray()
    naive = np.log((counts + 0.5) / counts.sum(1, keepdims=True))

    free = log_expression(adapted.get_counterfactual_expression(adata, batch=None))
    result = {
        "model_kwargs": settings,
        "batch_free": {
            "armed": centred_corr(true_free, free),
            "naive": centred_corr(true_free, naive),
        },
        "other_batch": {},
    }
    for k, name in enumerate(categories):
        true_k = true_free + effect[:, k]
        true_k -= np.log(np.exp(true_k).sum(1, keepdims=True))
        as_k = log_expression(adapted.get_counterfactual_expression(adata, batch=name))
        moved = batches != k
        result["other_batch"][name] = {
            "armed": centred_corr(true_k[moved], as_k[moved]),
            "naive": centred_corr(true_k[moved], naive[moved]),
            **effect_fit((as_k - free).mean(0), effect[:, k]),
            "seen_in_training": name != held_out,
        }
    if plot:
        plot_truth(adata, adapted, free, true_free, effect, held_out)
    return result


def plot_truth(adata, model, free, true_free, effect, held_out) -> None:
    """Predicted vs true: batch-free expression, and per-gene effects of two batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(SEED)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    cells = rng.choice(adata.n_obs, 300, replace=False)
    a, b = true_free[cells] - true_free.mean(0), free[cells] - free.mean(0)
    axes[0].scatter(a.ravel(), b.ravel(), s=1, alpha=0.15, rasterized=True)
    axes[0].set(
        xlabel="true batch-free log expression (gene-centred)",
        ylabel="predicted (batch=None)",
        title=f"batch-free: r = {centred_corr(true_free, free):.3f}",
    )
    categories = list(adata.obs["batch"].cat.categories)
    for ax, name in zip(axes[1:], [categories[0], held_out], strict=True):
        k = categories.index(name)
        as_k = log_expression(model.get_counterfactual_expression(adata, batch=name))
        lfc = (as_k - free).mean(0)
        fit = effect_fit(lfc, effect[:, k])
        true = effect[:, k] - effect[:, k].mean()
        ax.scatter(true, lfc - lfc.mean(), s=6, alpha=0.6)
        lim = np.abs(true).max()
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
        tag = "adapted, unseen in training" if name == held_out else "seen in training"
        ax.set(
            xlabel="true per-gene log effect (vs the seen batches' average)",
            ylabel="predicted (as batch - batch-free)",
            title=f"{name} ({tag})\nr = {fit['effect_r']:.3f}, slope = {fit['effect_slope']:.2f}",
        )
    fig.tight_layout()
    fig.savefig(RESULTS / "rna_counterfactuals_truth.png", dpi=110)
    plt.close(fig)


class PeakRSS:
    """Sample this process's resident memory every 5 ms; report the peak above a baseline."""

    def __enter__(self):
        gc.collect()
        # Hand memory freed earlier back to the OS, so the call cannot hide in reused pages.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.baseline = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    @property
    def above_baseline_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def memory_check() -> dict:
    n_cells, n_genes, n_batches = 100_000, 2_000, 10
    adata = simulate_counts(
        n_cells=n_cells, n_genes=n_genes, n_batches=n_batches, n_cell_types=8, seed=SEED
    )
    del adata.varm["true_log_profile"], adata.varm["true_batch_effect"]
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=SEED)
    # Memory does not depend on how well the model fits: one short epoch on a subset.
    model.train(max_epochs=1, seed=SEED, train_size=0.2, validation_size=0.01, **QUIET)
    runs = []
    for chunk in (256, 1024, 4096):
        gene_sums = np.zeros(n_genes)
        t0 = time.perf_counter()
        with PeakRSS() as peak:
            for batch in adata.obs["batch"].cat.categories:
                for _, values in model.iter_counterfactual_expression(
                    batch=batch, batch_size=chunk
                ):
                    gene_sums += values.sum(0)
        runs.append(
            {
                "chunk_size": chunk,
                "peak_mb_above_baseline": peak.above_baseline_mb,
                "seconds": time.perf_counter() - t0,
                "chunk_output_mb": chunk * n_genes * 4 / 2**20,
            }
        )
        print(runs[-1], flush=True)
    # Peak against the number of cells: one batch, chunk 1024, growing subsets.
    by_cells = []
    for n in (10_000, 30_000, 100_000):
        with PeakRSS() as peak:
            for _, values in model.iter_counterfactual_expression(
                batch="batch_0", indices=np.arange(n), batch_size=1024
            ):
                values.sum()
        by_cells.append({"n_cells": n, "peak_mb_above_baseline": peak.above_baseline_mb})
        print(by_cells[-1], flush=True)
    with PeakRSS() as peak:
        one = model.get_counterfactual_expression(batch="batch_0", batch_size=1024)
    collected = {
        "output_mb": one.to_numpy().nbytes / 2**20,
        "peak_mb_above_baseline": peak.above_baseline_mb,
    }
    return {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_batches": n_batches,
        "all_at_once_mb": n_batches * n_cells * n_genes * 4 / 2**20,
        "streamed": runs,
        "streamed_by_cells": by_cells,
        "one_batch_collected": collected,
    }


def plot_memory(memory: dict) -> None:
    """Peak memory against chunk size and against the number of cells streamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    chunks = [r["chunk_size"] for r in memory["streamed"]]
    ax1.plot(
        chunks,
        [r["peak_mb_above_baseline"] for r in memory["streamed"]],
        "o-",
        label="peak above baseline",
    )
    ax1.plot(
        chunks,
        [r["chunk_output_mb"] for r in memory["streamed"]],
        "s--",
        label="one chunk of output",
    )
    ax1.axhline(memory["all_at_once_mb"], color="C3", ls=":", label="all batches at once")
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="chunk size (cells)",
        ylabel="MB",
        title=f"{memory['n_cells']:,} cells x {memory['n_genes']:,} genes "
        f"x {memory['n_batches']} batches",
    )
    ax1.set_xticks(chunks, [str(c) for c in chunks])
    ax1.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax1.legend(fontsize=8)
    cells = [r["n_cells"] for r in memory["streamed_by_cells"]]
    ax2.plot(cells, [r["peak_mb_above_baseline"] for r in memory["streamed_by_cells"]], "o-")
    ax2.set(
        xlabel="cells streamed (one batch, chunk 1024)",
        ylabel="peak MB above baseline",
        ylim=(0, None),
        title="peak does not grow with the number of cells",
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "rna_counterfactuals_memory.png", dpi=110)
    plt.close(fig)


def main() -> None:
    torch.set_num_threads(1)
    logging.getLogger("armed_bio").setLevel(logging.WARNING)
    stored = RESULTS / "rna_counterfactuals.json"
    # "memory" / "truth": rerun that part only and keep the other as stored.
    if sys.argv[1:] == ["memory"]:
        truth = json.loads(stored.read_text())["truth"]
    else:
        truth = {
            "v1": truth_check(V1),
            "v2": truth_check(V2),
            "v3": truth_check(V3),
            "v4": truth_check(V4),
            "v5": truth_check({}, plot=True),
        }
    if sys.argv[1:] == ["truth"]:
        memory = json.loads(stored.read_text())["memory"]
    else:
        memory = memory_check()
    versions = list(truth)
    rows = [
        "| target | "
        + " | ".join(f"{v} r" for v in versions)
        + " | naive r | "
        + " | ".join(f"{v} effect r" for v in versions)
        + " | "
        + " | ".join(f"{v} effect slope" for v in versions)
        + " |",
        "|---|" + "---|" * (3 * len(versions) + 1),
        "| batch-free expression | "
        + " | ".join(f"{truth[v]['batch_free']['armed']:.3f}" for v in versions)
        + f" | {truth[versions[-1]]['batch_free']['naive']:.3f} |"
        + " |" * (2 * len(versions)),
    ]
    for name, r in truth[versions[-1]]["other_batch"].items():
        each = [truth[v]["other_batch"][name] for v in versions]
        tag = "" if r["seen_in_training"] else " (unseen in training, adapted)"
        rows.append(
            f"| expression as {name}{tag} | "
            + " | ".join(f"{e['armed']:.3f}" for e in each)
            + f" | {r['naive']:.3f} | "
            + " | ".join(f"{e['effect_r']:.3f}" for e in each)
            + " | "
            + " | ".join(f"{e['effect_slope']:.2f}" for e in each)
            + " |"
        )
    mem = [
        "| chunk size | peak MB above baseline | chunk output MB | seconds (10 batches) |",
        "|---|---|---|---|",
    ]
    for r in memory["streamed"]:
        mem.append(
            f"| {r['chunk_size']} | {r['peak_mb_above_baseline']:.0f} | "
            f"{r['chunk_output_mb']:.1f} | {r['seconds']:.1f} |"
        )
    mem += ["", "| cells streamed (one batch, chunk 1024) | peak MB above baseline |", "|---|---|"]
    for r in memory["streamed_by_cells"]:
        mem.append(f"| {r['n_cells']:,} | {r['peak_mb_above_baseline']:.0f} |")
    plot_memory(memory)
    c = memory["one_batch_collected"]
    table = (
        "# Counterfactual expression\n\n## Against the simulated truth (8,000 cells x 500 genes, "
        "5 batches, batch_4 held out then adapted)\n\nv1: the first release's defaults "
        "(`_common.V1`); v2: those of 0.3-0.6 (`_common.V2`); v3: those of 0.7-0.11 "
        "(`_common.V3`); v4: those of 0.12 (`_common.V4`); v5: today's. r: correlation "
        "over cells x genes of log expression, "
        "each gene's mean removed; cells moved out of their own batch for 'as batch k'. "
        "Effect r and slope: the per-gene effect (mean over cells of as batch k minus "
        "batch-free) against the true one measured from the seen batches' average, both "
        "centred over genes; slope 1 = effects at their true size.\n\n"
        + "\n".join(rows)
        + f"\n\n## Memory: every cell as every batch, {memory['n_cells']:,} cells x "
        f"{memory['n_genes']:,} genes x {memory['n_batches']} batches, streamed\n\n"
        + "\n".join(mem)
        + f"\n\nAll batches x cells x genes at once would need {memory['all_at_once_mb']:,.0f} "
        f"MB. Collecting one batch's full result with `get_counterfactual_expression`: output "
        f"{c['output_mb']:.0f} MB, peak {c['peak_mb_above_baseline']:.0f} MB above baseline.\n"
    )
    write_results(
        "rna_counterfactuals",
        {"truth": truth, "memory": memory, "machine": machine(), "seed": SEED},
        table,
    )


if __name__ == "__main__":
    main()
