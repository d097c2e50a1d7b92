r"""Training speed and memory of ArmedRNA against scVI on simulated sparse counts.

For 20k, 100k and 1M simulated cells x 2,000 genes (sparse CSR, about the density of the Kang
PBMC HVGs), trains full ``ArmedRNA``, ``ArmedRNA(mode="fixed")`` and ``scvi.model.SCVI`` (its
defaults) with the same batch size (128) and split, alternating the models in one process
(the order flips every round), and reports the median seconds per epoch (90 % of the cells
train; like scvi, no validation pass unless early stopping is on), cells per second and the
ratio to scVI. Peak resident memory is measured separately: each model trains in a fresh
subprocess (200 training batches), whose peak RSS is read from the OS next to the RSS of the
data alone.

    .venv/bin/python benchmarks/rna_speed.py                       # time + memory, every size
    .venv/bin/python benchmarks/rna_speed.py time --sizes 20000
    .venv/bin/python benchmarks/rna_speed.py memory --sizes 1000000 --repeats 3
    .venv/bin/python benchmarks/rna_speed.py time --sizes 1000000 --accelerator gpu \\
        --threads 4 --limit-train-batches 2000 --stem rna_speed_gpu

Simulated matrices are cached in ``benchmarks/.cache/rna_speed/`` (not committed).
Writes results/<stem>.{json,md} (``rna_speed`` by default; memory runs add ``_memory``) and
the figure results/<stem>_scaling.png (``plot`` redraws it from the stored JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
import torch
from _common import RESULTS, EpochTimer, machine, write_results
from scipy import sparse

from armed_bio.model import ArmedRNA

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("scvi").setLevel(logging.ERROR)
CACHE = Path(__file__).resolve().parent / ".cache" / "rna_speed"
SIZES = [20_000, 100_000, 1_000_000]
MODELS = ["armed", "armed_fixed", "scvi"]
ROUNDS = {20_000: 3, 100_000: 2, 1_000_000: 1}
N_GENES, N_BATCHES, N_TYPES, BATCH_SIZE = 2000, 10, 8, 128
SIM_MAX = 100_000


def simulate_sparse(n_cells: int, seed: int = 0, chunk: int = 20_000) -> ad.AnnData:
    """Negative-binomial counts of cell types x batches, built chunk by chunk as CSR.

    Gene base rates are log-normal (s.d. 2), cell types shift 20 % of genes, batches shift
    every gene (s.d. 0.5), library sizes are log-normal around 1,000: about 18 % non-zeros,
    like the Kang PBMC HVGs (17 %).
    """
    rng = np.random.default_rng(seed)
    base = np.maximum(rng.normal(0.0, 2.0, N_GENES), -3.5)  # no gene empty at 20k cells
    types = rng.normal(0.0, 1.0, (N_TYPES, N_GENES)) * (rng.random((N_TYPES, N_GENES)) < 0.2)
    batches = rng.normal(0.0, 0.5, (N_BATCHES, N_GENES))
    blocks, cell_type, batch = [], [], []
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        t = rng.integers(N_TYPES, size=n)
        b = rng.integers(N_BATCHES, size=n)
        logits = base + types[t] + batches[b]
        rho = np.exp(logits - logits.max(1, keepdims=True))
        rho /= rho.sum(1, keepdims=True)
        mu = rho * np.exp(rng.normal(np.log(1000.0), 0.3, n))[:, None]
        counts = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
        blocks.append(sparse.csr_matrix(counts))
        cell_type.append(t)
        batch.append(b)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{i}" for i in np.concatenate(batch)]),
            "cell_type": pd.Categorical([f"type_{i}" for i in np.concatenate(cell_type)]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=sparse.vstack(blocks, format="csr"), obs=obs)


def load(n_cells: int) -> ad.AnnData:
    """The simulated matrix of n_cells, from the cache when it is there.

    Above 100k cells, rows are drawn with replacement from the 100k simulation (sampling
    2e9 negative-binomial counts would take longer than the benchmark itself).
    """
    path = CACHE / f"sim_{n_cells}.npz"
    if not path.exists():
        if n_cells > SIM_MAX:
            pool = load(SIM_MAX)
            rows = np.sort(np.random.default_rng(1).integers(SIM_MAX, size=n_cells))
            adata = ad.AnnData(X=pool.X[rows], obs=pool.obs.iloc[rows].reset_index(drop=True))
            adata.obs_names = [f"cell_{i}" for i in range(n_cells)]
        else:
            adata = simulate_sparse(n_cells)
        CACHE.mkdir(parents=True, exist_ok=True)
        x = adata.X
        np.savez(
            path,
            data=x.data,
            indices=x.indices,
            indptr=x.indptr,
            batch=adata.obs["batch"].cat.codes.to_numpy(),
            cell_type=adata.obs["cell_type"].cat.codes.to_numpy(),
        )
        return adata
    f = np.load(path)
    x = sparse.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=(n_cells, N_GENES))
    batches = [f"batch_{i}" for i in range(N_BATCHES)]
    types = [f"type_{i}" for i in range(N_TYPES)]
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical.from_codes(f["batch"], batches),
            "cell_type": pd.Categorical.from_codes(f["cell_type"], types),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=x, obs=obs)


def make_model(name: str, adata: ad.AnnData):
    if name == "scvi":
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
        return scvi.model.SCVI(adata)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    return ArmedRNA(adata, mode="fixed" if name == "armed_fixed" else "mixed")


def fit(
    name: str,
    adata: ad.AnnData,
    epochs: int,
    accelerator: str,
    batch_size: int = 128,
    **trainer_kwargs,
) -> dict:
    model = make_model(name, adata)
    timer = EpochTimer()
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        accelerator=accelerator,
        devices=1,
        enable_progress_bar=False,
        callbacks=[timer],
        **trainer_kwargs,
    )
    out = {"epoch_seconds": timer.times, "train_call_seconds": time.perf_counter() - t0}
    del model
    gc.collect()
    return out


def run_time(
    sizes: list[int],
    accelerator: str,
    stem: str,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> None:
    rows = []
    # limit: time this many training batches per epoch and scale to the full epoch, for
    # sizes whose epochs outlast the machine's time.
    extra = {} if limit is None else {"limit_train_batches": limit}
    for n in sizes:
        adata = load(n)
        epochs = 1 if n >= 1_000_000 else 2  # the first epoch carries start-up costs
        for r in range(ROUNDS.get(n, 1)):
            order = MODELS if r % 2 == 0 else MODELS[::-1]
            for name in order:
                if accelerator == "gpu":
                    torch.cuda.reset_peak_memory_stats()
                res = fit(name, adata, epochs, accelerator, batch_size, **extra)
                n_batches = math.ceil(math.ceil(0.9 * adata.n_obs) / batch_size)
                scale = 1.0 if limit is None else n_batches / min(limit, n_batches)
                row = {
                    "n_cells": n,
                    "model": name,
                    "round": r,
                    **res,
                    "timed_batches": limit,
                    "epoch_s": res["epoch_seconds"][-1] * scale,
                }
                if accelerator == "gpu":
                    row["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                rows.append(row)
                print(json.dumps(row), flush=True)
        del adata
        gc.collect()
    df = pd.DataFrame(rows)
    med = df.groupby(["n_cells", "model"])["epoch_s"].median().unstack()
    device = torch.cuda.get_device_name(0) if accelerator == "gpu" else machine()["processor"]
    lines = [
        f"# ArmedRNA vs scVI: training speed ({accelerator}: {device})\n",
        f"Simulated sparse counts x {N_GENES} genes, {N_BATCHES} batches; batch size "
        f"{batch_size}; 90 % of the cells train (scvi's split; no validation pass); median "
        "seconds of the last epoch over alternating rounds; cells/s = training cells / s. "
        + (
            ""
            if limit is None
            else f"Epochs of more than {limit} training batches are timed "
            f"on {limit} batches and scaled to the full epoch. "
        )
        + f"Torch threads: {torch.get_num_threads()}.\n",
        "| cells | ArmedRNA s/epoch | ArmedRNA fixed s/epoch | scVI s/epoch | ArmedRNA cells/s "
        "| scVI cells/s | ratio ArmedRNA / scVI | ratio fixed / scVI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in med.index:
        a, f, s = med.loc[n, "armed"], med.loc[n, "armed_fixed"], med.loc[n, "scvi"]
        lines.append(
            f"| {n:,} | {a:.1f} | {f:.1f} | {s:.1f} | {0.9 * n / a:,.0f} | "
            f"{0.9 * n / s:,.0f} | {a / s:.2f} | {f / s:.2f} |"
        )
    payload = {
        "runs": rows,
        "median_epoch_s": med.to_dict(),
        "accelerator": accelerator,
        "batch_size": batch_size,
        "device": device,
        "machine": machine(),
    }
    write_results(stem, payload, "\n".join(lines) + "\n")


def status_gib(field: str) -> float:
    """A memory field of /proc/self/status in GiB: VmRSS (now) or VmHWM (peak).

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork and exec, so a
    child started by a large parent would report the parent's peak.
    """
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))
    return kb / 2**20


def memory_child(n: int, name: str) -> None:
    """One model in a fresh process: print RSS of the data alone and the peak after training."""
    torch.set_num_threads(1)
    adata = load(n)
    data_gib = status_gib("VmRSS")
    fit(name, adata, 1, "cpu", limit_train_batches=200)
    peak = status_gib("VmHWM")
    print(
        "RESULT "
        + json.dumps({"n_cells": n, "model": name, "data_rss_gib": data_gib, "peak_rss_gib": peak}),
        flush=True,
    )


def run_memory(sizes: list[int], stem: str, repeats: int = 1) -> None:
    """Peak RSS of each model in fresh processes; ``repeats`` rounds, the order rotated each."""
    rows = []
    for n in sizes:
        load(n)  # simulate once, outside the measured processes
        for r in range(repeats):
            # Rotate the order so that no model always runs first on a cold page cache.
            for name in MODELS[r % len(MODELS) :] + MODELS[: r % len(MODELS)]:
                out = subprocess.run(
                    [sys.executable, __file__, "memory-child", "--sizes", str(n), "--model", name],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
                rows.append({**json.loads(line[len("RESULT ") :]), "repeat": r})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    df["over_data_gib"] = df["peak_rss_gib"] - df["data_rss_gib"]
    lines = [
        "# ArmedRNA vs scVI: peak resident memory (CPU)\n",
        "Each model trains 200 batches of 128 (for ArmedRNA followed by the Z-predictor's "
        "calibration on the 10 % held-out cells) in a fresh process; peak RSS "
        "(VmHWM) from the OS; 'data' = RSS after loading the sparse matrix"
        + (f"; mean ± s.d. over {repeats} rounds of fresh processes" if repeats > 1 else "")
        + ".\n",
        "| cells | data GiB | ArmedRNA peak GiB | ArmedRNA fixed peak GiB | scVI peak GiB |",
        "|---|---|---|---|---|",
    ]

    def cell(values: pd.Series) -> str:
        return f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else "")

    for n, g in df.groupby("n_cells"):
        peaks = [cell(g.loc[g["model"] == name, "peak_rss_gib"]) for name in MODELS]
        lines.append(f"| {n:,} | {g['data_rss_gib'].mean():.2f} | " + " | ".join(peaks) + " |")
    if repeats > 1:
        lines += [
            "\nPeak over the data alone (GiB):\n",
            "| cells | " + " | ".join(LABELS[m] for m in MODELS) + " |",
            "|---|" + "---|" * len(MODELS),
        ]
        for n, g in df.groupby("n_cells"):
            over = [
                f"{g.loc[g['model'] == m, 'over_data_gib'].mean():.3f} ± "
                f"{g.loc[g['model'] == m, 'over_data_gib'].std():.3f}"
                for m in MODELS
            ]
            lines.append(f"| {n:,} | " + " | ".join(over) + " |")
    payload = {"runs": df.drop(columns="over_data_gib").to_dict("records"), "machine": machine()}
    write_results(f"{stem}_memory", payload, "\n".join(lines) + "\n")


LABELS = {"armed": "ArmedRNA", "armed_fixed": "ArmedRNA fixed", "scvi": "scVI"}


def plot_scaling(stem: str) -> None:
    """Seconds per epoch and peak memory against the number of cells, from the stored JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = json.loads((RESULTS / f"{stem}.json").read_text())["median_epoch_s"]
    memory = pd.DataFrame(json.loads((RESULTS / f"{stem}_memory.json").read_text())["runs"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name in MODELS:
        n = sorted(int(k) for k in speed[name])
        ax_t.plot(n, [speed[name][str(k)] for k in n], "o-", label=LABELS[name])
        g = memory[memory["model"] == name].groupby("n_cells")["peak_rss_gib"].mean()
        ax_m.plot(g.index, g.to_numpy(), "o-", label=LABELS[name])
    data = memory.groupby("n_cells")["data_rss_gib"].mean()
    ax_m.plot(data.index, data.to_numpy(), "k--", label="the data alone")
    ax_t.set(
        xscale="log",
        yscale="log",
        xlabel="cells (x 2,000 genes, sparse)",
        ylabel="seconds per epoch (1 CPU thread)",
        title="time per epoch",
    )
    ax_m.set(
        xscale="log",
        xlabel="cells (x 2,000 genes, sparse)",
        ylabel="peak RSS (GiB)",
        title="peak resident memory",
    )
    for ax in (ax_t, ax_m):
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}_scaling.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "step", nargs="?", default="all", choices=["all", "time", "memory", "plot", "memory-child"]
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stem", default="rna_speed")
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=1, help="memory: rounds of processes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step == "memory-child":
        memory_child(args.sizes[0], args.model)
        return
    if args.step in ("all", "time"):
        run_time(args.sizes, args.accelerator, args.stem, args.limit_train_batches, args.batch_size)
    if args.step in ("all", "memory"):
        run_memory(args.sizes, args.stem, args.repeats)
    if args.step in ("all", "plot"):
        plot_scaling(args.stem)


if __name__ == "__main__":
    main()
