"""Foundation check of ArmedRNA on the real scRNA sets in ../shared/data.

For each dataset (2,000 batch-aware HVGs, the same for every method) and 3 seeds:
batch and cell-type silhouette of uncorrected PCA, the FE latent and the RE latent; then
seconds per epoch of ArmedRNA and scvi.model.SCVI on the same data and batch size, alternating
runs in this process, as a ratio. Writes results/rna_silhouettes_and_speed.{json,md}.

    .venv/bin/python benchmarks/rna_silhouettes_and_speed.py [--seeds 0 1 2] [--epochs 6]
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import scanpy as sc
import scvi
import torch
from _common import EpochTimer, load_hvg, machine, steady, write_results
from sklearn.metrics import silhouette_score

from armed_bio.model import ArmedRNA

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}


def pca(adata, seed: int) -> np.ndarray:
    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=30, random_state=seed)
    return tmp.obsm["X_pca"]


def silhouettes(x, adata) -> dict:
    return {
        "batch": float(silhouette_score(x, adata.obs["batch"])),
        "cell_type": float(silhouette_score(x, adata.obs["cell_type"])),
    }


def quality(adata, seeds) -> dict:
    out = {"pca": silhouettes(pca(adata, 0), adata), "seeds": {}}
    for seed in seeds:
        a = adata.copy()
        ArmedRNA.setup_anndata(a, batch_key="batch")
        model = ArmedRNA(a, seed=seed)
        model.train(seed=seed, **QUIET)
        out["seeds"][seed] = {
            "fe": silhouettes(model.get_latent_representation(kind="fe"), a),
            "re": silhouettes(model.get_latent_representation(kind="re"), a),
            "epochs": model.train_params_["epochs_trained"],
            "final_adversary_ce": float(model.history["adversary_ce_train"].iloc[-1, 0]),
            "ln_n_batches": float(np.log(a.obs["batch"].nunique())),
        }
        print(adata.uns["name"], seed, out["seeds"][seed], flush=True)
    return out


def speed(adata, epochs: int, repeats: int = 2) -> dict:
    times = {"armed": [], "scvi": []}
    for _ in range(repeats):
        for name in ("armed", "scvi"):
            a = adata.copy()
            timer = EpochTimer()
            if name == "armed":
                ArmedRNA.setup_anndata(a, batch_key="batch")
                model = ArmedRNA(a)
            else:
                scvi.model.SCVI.setup_anndata(a, batch_key="batch")
                model = scvi.model.SCVI(a, n_latent=10)
            model.train(max_epochs=epochs, batch_size=128, callbacks=[timer], **QUIET)
            times[name].append(steady(timer.times))
    armed, ref = float(np.median(times["armed"])), float(np.median(times["scvi"]))
    return {
        "armed_s_per_epoch": armed,
        "scvi_s_per_epoch": ref,
        "ratio": armed / ref,
        "runs": times,
        "epochs_per_run": epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--datasets", nargs="+", default=["cellbench_lung5", "kang_pbmc_5donors"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"machine": machine(), "datasets": {}}
    rows = []
    for name in args.datasets:
        adata = load_hvg(name)
        adata.uns["name"] = name
        q = quality(adata, args.seeds)
        s = speed(adata, args.epochs)
        results["datasets"][name] = {"shape": list(adata.shape), "quality": q, "speed": s}
        for kind in ("fe", "re"):
            for metric in ("batch", "cell_type"):
                vals = [q["seeds"][seed][kind][metric] for seed in args.seeds]
                q.setdefault("summary", {})[f"{kind}_{metric}"] = (np.mean(vals), np.std(vals))
        sm = q["summary"]
        rows.append(
            f"| {name} | {adata.n_obs} x {adata.n_vars} | {q['pca']['batch']:.3f} | "
            f"{sm['fe_batch'][0]:.3f} ± {sm['fe_batch'][1]:.3f} | "
            f"{sm['re_batch'][0]:.3f} ± {sm['re_batch'][1]:.3f} | {q['pca']['cell_type']:.3f} | "
            f"{sm['fe_cell_type'][0]:.3f} ± {sm['fe_cell_type'][1]:.3f} | "
            f"{s['armed_s_per_epoch']:.2f} | {s['scvi_s_per_epoch']:.2f} | {s['ratio']:.2f} |"
        )
    table = (
        "# ArmedRNA: silhouettes and speed on real data\n\n"
        f"Seeds {args.seeds}; mean ± s.d. Silhouette of each embedding against batch (lower = "
        "better mixed; for RE higher = batch kept) and cell type (higher = better kept). "
        "Speed: median steady seconds per epoch, batch 128, one torch thread, ArmedRNA and "
        "scVI alternating in one process.\n\n"
        "| data | cells x genes | PCA batch | FE batch | RE batch | PCA cell type | "
        "FE cell type | ArmedRNA s/epoch | scVI s/epoch | ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    write_results("rna_silhouettes_and_speed", results, table)


if __name__ == "__main__":
    main()
