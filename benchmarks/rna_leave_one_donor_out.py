"""Leave-one-donor-out cell-type prediction on Kang PBMC: ArmedRNA heads vs scANVI mapping.

Each of the 5 donors is held out once. On the other 4 (the reference):
- ArmedRNA with ``labels_key`` trains its FE label head and its mixed-effects head; the
  held-out donor is an unseen batch, so the ME head uses the calibrated soft Z (Z = 0 for
  unsure cells).
- scvi-tools' reference mapping: SCVI on the reference, SCANVI from it, then
  ``SCANVI.load_query_data`` on the held-out donor (unlabelled), a short query fit and
  ``predict``.
Both use the same 2,000 HVGs, chosen on the reference donors only, and the same seed.

Run: ``.venv/bin/python benchmarks/rna_leave_one_donor_out.py [armed] [donor ...]`` (about 15
min per fold on one CPU core; ``armed`` re-measures only ArmedRNA in the stored folds, about a
minute each). Each fold is stored in ``results/rna_leave_one_donor_out_folds/``; folds
already there are skipped, so two processes with different donors can share the work; the table
is written once all five are done.
Writes ``benchmarks/results/rna_leave_one_donor_out.{json,md}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import anndata as ad
import numpy as np
import scanpy as sc
import scvi
import torch
from _common import RESULTS, SHARED, machine, write_results
from sklearn.metrics import balanced_accuracy_score

from armed_bio.model import ArmedRNA
from armed_bio.model._query import normalised_entropy

SEED = 0
BATCH, LABEL = "batch", "cell_type"
SCVI_EPOCHS, SCANVI_EPOCHS, QUERY_EPOCHS = 100, 20, 100
QUIET = {"accelerator": "cpu", "enable_progress_bar": False}
# One JSON per held-out donor, so folds can run in parallel processes and resume.
FOLDS = RESULTS / "rna_leave_one_donor_out_folds"


def split(adata: ad.AnnData, donor) -> tuple[ad.AnnData, ad.AnnData]:
    """Reference and query restricted to HVGs chosen on the reference alone."""
    is_query = (adata.obs[BATCH] == donor).to_numpy()
    ref = adata[~is_query].copy()
    hvg = sc.pp.highly_variable_genes(
        ref, n_top_genes=2000, flavor="seurat_v3", batch_key=BATCH, inplace=False
    )["highly_variable"].to_numpy()
    ref = ref[:, hvg].copy()
    sc.pp.filter_genes(ref, min_cells=1)
    query = adata[is_query][:, ref.var_names].copy()
    for a in (ref, query):
        a.obs[BATCH] = a.obs[BATCH].astype(str)
    return ref, query


def run_armed(ref: ad.AnnData, query: ad.AnnData) -> dict:
    t0 = time.perf_counter()
    ArmedRNA.setup_anndata(ref, batch_key=BATCH, labels_key=LABEL)
    model = ArmedRNA(ref, seed=SEED)
    model.train(seed=SEED, **QUIET)
    fit_s = time.perf_counter() - t0
    truth = query.obs[LABEL].astype(str).to_numpy()
    proba = model.predict_batch_proba(query)
    entropy = normalised_entropy(torch.as_tensor(proba.to_numpy())).numpy()
    out = {
        "fit_seconds": fit_s,
        "z_temperature": float(model.module.z_temperature),
        "fe_reconstruction_weight": model.module.fe_reconstruction_weight,
        "fraction_z_zero": float((entropy > model.entropy_threshold).mean()),
        "mean_soft_z": proba.mean().round(3).to_dict(),
    }
    for kind in ("fe", "me"):
        pred = model.predict(query, head=kind).astype(str)
        out[f"{kind}_accuracy"] = float((pred == truth).mean())
        out[f"{kind}_balanced_accuracy"] = float(balanced_accuracy_score(truth, pred))
    return out


def run_scanvi(ref: ad.AnnData, query: ad.AnnData) -> dict:
    t0 = time.perf_counter()
    scvi.settings.seed = SEED
    ref = ref.copy()
    scvi.model.SCVI.setup_anndata(ref, batch_key=BATCH, labels_key=LABEL)
    vae = scvi.model.SCVI(ref)
    vae.train(max_epochs=SCVI_EPOCHS, **QUIET)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    lvae.train(max_epochs=SCANVI_EPOCHS, **QUIET)
    q = query.copy()
    truth = q.obs[LABEL].astype(str).to_numpy()
    q.obs[LABEL] = "Unknown"
    qvae = scvi.model.SCANVI.load_query_data(q, lvae)
    qvae.train(max_epochs=QUERY_EPOCHS, plan_kwargs={"weight_decay": 0.0}, **QUIET)
    pred = np.asarray(qvae.predict(q)).astype(str)
    return {
        "fit_seconds": time.perf_counter() - t0,
        "accuracy": float((pred == truth).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
    }


def main() -> None:
    torch.set_num_threads(1)
    logging.getLogger("armed_bio").setLevel(logging.WARNING)
    adata = ad.read_h5ad(SHARED / "kang_pbmc_5donors.h5ad")
    sc.pp.filter_cells(adata, min_counts=1)
    donors = sorted(adata.obs[BATCH].astype(str).unique())
    adata.obs[BATCH] = adata.obs[BATCH].astype(str)
    FOLDS.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:]
    # "armed": re-measure ArmedRNA in the stored folds (after a change of its defaults) and
    # keep their scANVI results, which do not depend on ArmedRNA.
    armed_only = "armed" in args
    args = [a for a in args if a != "armed"]
    for donor in args or donors:
        if donor not in donors:
            raise SystemExit(f"unknown donor {donor!r}; choose from {donors}")
        path = FOLDS / f"{donor}.json"
        if path.exists() and not armed_only:
            continue
        if armed_only and not path.exists():
            raise SystemExit(f"no stored fold for {donor}: run it in full first")
        ref, query = split(adata, donor)
        armed = run_armed(ref, query)
        scanvi = json.loads(path.read_text())["scanvi"] if armed_only else run_scanvi(ref, query)
        fold = {"held_out": donor, "n_query": query.n_obs, "armed": armed, "scanvi": scanvi}
        path.write_text(json.dumps(fold, indent=2, default=float))
        print(donor, armed["fe_accuracy"], armed["me_accuracy"], scanvi["accuracy"], flush=True)
    missing = [d for d in donors if not (FOLDS / f"{d}.json").exists()]
    if missing:
        print(f"folds still to run: {missing}")
        return
    folds = [json.loads((FOLDS / f"{d}.json").read_text()) for d in donors]

    rows = [
        "| held-out donor | cells | ArmedRNA FE head | ArmedRNA ME head (soft Z) | "
        "scANVI query mapping | ME cells on Z = 0 |",
        "|---|---|---|---|---|---|",
    ]
    for f in folds:
        rows.append(
            f"| {f['held_out']} | {f['n_query']} | {f['armed']['fe_accuracy']:.3f} | "
            f"{f['armed']['me_accuracy']:.3f} | {f['scanvi']['accuracy']:.3f} | "
            f"{f['armed']['fraction_z_zero']:.2f} |"
        )

    def mean(get):
        return float(np.mean([get(f) for f in folds]))

    rows.append(
        f"| **mean accuracy** | | {mean(lambda f: f['armed']['fe_accuracy']):.3f} | "
        f"{mean(lambda f: f['armed']['me_accuracy']):.3f} | "
        f"{mean(lambda f: f['scanvi']['accuracy']):.3f} | |"
    )
    rows.append(
        f"| **mean balanced accuracy** | | "
        f"{mean(lambda f: f['armed']['fe_balanced_accuracy']):.3f} | "
        f"{mean(lambda f: f['armed']['me_balanced_accuracy']):.3f} | "
        f"{mean(lambda f: f['scanvi']['balanced_accuracy']):.3f} | |"
    )
    table = (
        "# Leave-one-donor-out cell-type accuracy, Kang PBMC (5 donors, 4 cell types)\n\n"
        + "\n".join(rows)
        + f"\n\nArmedRNA: defaults (fe_reconstruction_weight "
        f"{folds[0]['armed'].get('fe_reconstruction_weight', 1.0)}), seed {SEED}. "
        f"scANVI: SCVI {SCVI_EPOCHS} epochs, SCANVI {SCANVI_EPOCHS}, query {QUERY_EPOCHS} "
        "(scArches). 2,000 HVGs chosen on the reference donors of each fold.\n"
    )
    write_results(
        "rna_leave_one_donor_out",
        {
            "folds": folds,
            "machine": machine(),
            "seed": SEED,
            "epochs": {"scvi": SCVI_EPOCHS, "scanvi": SCANVI_EPOCHS, "query": QUERY_EPOCHS},
        },
        table,
    )


if __name__ == "__main__":
    main()
