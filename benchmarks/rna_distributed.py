"""Distributed training of ArmedRNA: Lightning DDP over two CPU processes (gloo) vs one process.

Trains ``ArmedRNA`` on ``kang_pbmc_5donors`` (2,000 batch-aware HVGs) in one process with two
seeds and in two DDP processes (``accelerator="cpu", devices=2``, gloo) with the first seed,
then compares the latents: batch and cell-type silhouettes, and how many of each cell's 15
nearest neighbours two latents share. The DDP latent is "comparable" when it agrees with the
one-process latent about as well as two one-process seeds agree with each other.
Writes results/rna_distributed.{json,md}.

    .venv/bin/python benchmarks/rna_distributed.py            # all runs, then the comparison
    .venv/bin/python benchmarks/rna_distributed.py train --devices 2 --seed 0 --out ddp.npz

On GPUs the same call is ``model.train(accelerator="gpu", devices=N,
strategy="ddp_find_unused_parameters_true")``, run as a script (not in a notebook), one process
per GPU; the batch size is per process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import load_hvg, machine, write_results
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from armed_bio.model import ArmedRNA

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
WORK = Path(__file__).resolve().parent / ".cache" / "rna_distributed"
DATASET = "kang_pbmc_5donors"


def train(devices: int, seed: int, out: Path) -> None:
    """One training run; with ``devices > 1`` Lightning re-runs this script once per rank."""
    torch.set_num_threads(1)
    adata = load_hvg(DATASET)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=seed)
    kwargs = {"accelerator": "cpu", "devices": devices, "enable_progress_bar": False}
    if devices > 1:
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
    t0 = time.perf_counter()
    model.train(seed=seed, **kwargs)
    seconds = time.perf_counter() - t0
    if int(os.environ.get("LOCAL_RANK", 0)) != 0:
        return  # every rank holds the same weights; rank 0 writes the result
    np.savez(
        out,
        fe=model.get_latent_representation(kind="fe"),
        re=model.get_latent_representation(kind="re"),
        facts=json.dumps(
            {
                "devices": devices,
                "seed": seed,
                "seconds": seconds,
                "epochs": model.train_params_["epochs_trained"],
                "final_train_loss": float(model.history["train_loss"].iloc[-1, 0]),
            }
        ),
    )


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 15) -> float:
    """Mean fraction of each cell's k nearest neighbours shared by two embeddings."""
    na = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a, return_distance=False)[:, 1:]
    nb = NearestNeighbors(n_neighbors=k + 1).fit(b).kneighbors(b, return_distance=False)[:, 1:]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb, strict=True)]))


def compare() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    runs = {
        "one_process_seed0": (1, 0),
        "one_process_seed1": (1, 1),
        "ddp_2_processes_seed0": (2, 0),
    }
    for name, (devices, seed) in runs.items():
        path = WORK / f"{name}.npz"
        if not path.exists():
            cmd = [
                sys.executable,
                __file__,
                "train",
                "--devices",
                str(devices),
                "--seed",
                str(seed),
                "--out",
                str(path),
            ]
            subprocess.run(cmd, check=True)
    adata = load_hvg(DATASET)
    data = {name: np.load(WORK / f"{name}.npz") for name in runs}
    rows = {}
    for name, d in data.items():
        facts = json.loads(str(d["facts"]))
        rows[name] = {
            **facts,
            "fe_silhouette_batch": float(silhouette_score(d["fe"], adata.obs["batch"])),
            "fe_silhouette_cell_type": float(silhouette_score(d["fe"], adata.obs["cell_type"])),
            "re_silhouette_batch": float(silhouette_score(d["re"], adata.obs["batch"])),
        }
    ref = data["one_process_seed0"]["fe"]
    overlaps = {
        "seed1_vs_seed0 (one process)": knn_overlap(data["one_process_seed1"]["fe"], ref),
        "ddp_vs_one_process (seed 0)": knn_overlap(data["ddp_2_processes_seed0"]["fe"], ref),
    }
    lines = [
        "# ArmedRNA: two DDP processes (CPU, gloo) vs one process\n",
        f"{DATASET}, {adata.n_obs} cells x {adata.n_vars} HVGs, default ArmedRNA and training "
        "(batch 128 per process). Command: `.venv/bin/python benchmarks/rna_distributed.py`.\n",
        "| run | processes | epochs | seconds | final train loss | FE batch silhouette | "
        "FE cell-type silhouette | RE batch silhouette |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['devices']} | {r['epochs']} | {r['seconds']:.0f} | "
            f"{r['final_train_loss']:.1f} | {r['fe_silhouette_batch']:.3f} | "
            f"{r['fe_silhouette_cell_type']:.3f} | {r['re_silhouette_batch']:.3f} |"
        )
    lines.append("\nShared 15 nearest neighbours in the FE latent (1 = same neighbourhoods):\n")
    lines += [f"- {k}: {v:.3f}" for k, v in overlaps.items()]
    write_results(
        "rna_distributed",
        {"runs": rows, "knn_overlap": overlaps, "machine": machine()},
        "\n".join(lines) + "\n",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", default="compare", choices=["compare", "train"])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.step == "train":
        train(args.devices, args.seed, args.out)
    else:
        compare()


if __name__ == "__main__":
    main()
