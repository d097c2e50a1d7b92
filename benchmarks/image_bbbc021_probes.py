"""ArmedImage on the 4 BBBC021 plates: wall time and what its fixed-effects latent keeps.

The conv autoencoder is trained without labels on all 5,339 MCF-7 crops
(``../shared/data/bbbc021_mcf7_crops_4plates.h5ad``: 4 plates = batches, 3 x 68 x 68), as a
user exploring a screen would run it. A fresh logistic regression (standardised input) then
predicts, from each embedding, the plate (5-fold stratified cross-validation over cells; chance
0.25) and the phenotype, DMSO vs protein synthesis inhibitor, with **each plate held out in
turn** (trained on three plates, scored on the fourth; chance 0.50). Balanced accuracy.

Run: ``.venv/bin/python benchmarks/image_bbbc021_probes.py LABEL [name=value ...]`` (model or
training arguments, e.g. ``max_epochs=30``; ``labels=True`` trains with the phenotype labels,
so the adversary is conditioned on them: its phenotype probe has then seen the held-out
plate's labels); each label is kept as one row.
"""

from __future__ import annotations

import json
import sys

import anndata as ad
import torch
from _common import (
    RESULTS,
    SHARED,
    machine,
    parse_value,
    pixel_pca,
    probe,
    train_armed_image,
    write_results,
)
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

from armed_bio.metrics import batch_predictability
from armed_bio.model import ArmedImage

STEM = "image_bbbc021_probes"
DATA = SHARED / "bbbc021_mcf7_crops_4plates.h5ad"
SEED = 0
#: Short names of the phenotype labels in the tables.
PHENOTYPES = {"DMSO": "DMSO", "Protein synthesis": "inhibitor"}


def table(payload: dict) -> str:
    """The markdown table of every labelled run in ``payload``."""
    lines = [
        "# ArmedImage on the 4 BBBC021 plates: what z_FE keeps\n",
        "5,339 MCF-7 crops (3 x 68 x 68), 4 plates, trained without labels; CPU, one torch "
        "thread. Probes: logistic regression, balanced accuracy; plate: 5-fold stratified "
        "(chance 0.25); phenotype (DMSO vs protein synthesis inhibitor): each plate held out "
        "in turn (chance 0.50). Command: "
        "`.venv/bin/python benchmarks/image_bbbc021_probes.py LABEL`.\n",
        "| run | train time | epochs | plate from z_FE | plate from pixels | plate from z_RE "
        "| phenotype from z_FE | phenotype from pixels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lab, r in payload["runs"].items():
        p = r["probes"]
        lines.append(
            f"| {lab} | {r['train_seconds'] / 60:.1f} min | {r['epochs']} | "
            f"{p['z_FE']['plate']:.3f} | {p['raw pixels (PCA 50)']['plate']:.3f} | "
            f"{p['z_RE']['plate']:.3f} | {p['z_FE']['phenotype']:.3f} | "
            f"{p['raw pixels (PCA 50)']['phenotype']:.3f} |"
        )
    within = {lab: r for lab, r in payload["runs"].items() if "plate within" in r}
    if within:
        names = list(next(iter(within.values()))["plate within"])
        lines += [
            "\n## The plate within each phenotype (the technical plate effect)\n",
            "5-fold stratified within the label's cells; chance: DMSO 0.25 (4 plates), "
            "inhibitor 0.50 (2 plates).\n",
            "| run | " + " | ".join(f"{e}, {g}" for e in names for g in PHENOTYPES.values()) + " |",
            "|---|" + "---|" * (len(names) * len(PHENOTYPES)),
        ]
        for lab, r in within.items():
            cells = [r["plate within"][e][g] for e in names for g in PHENOTYPES.values()]
            lines.append(f"| {lab} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plate_within_phenotypes(adata: ad.AnnData, embeddings: dict) -> dict:
    """Plate balanced accuracy within each phenotype, per embedding (linear probe)."""
    for name, x in embeddings.items():
        adata.obsm[name] = x
    scores = batch_predictability(
        adata, list(embeddings), "batch", label_key="label", classifiers=["linear"], seed=SEED
    )
    return {
        name: {
            short: float(
                scores.loc[
                    (scores["embedding"] == name) & (scores["group"] == group),
                    "balanced_accuracy",
                ].iloc[0]
            )
            for group, short in PHENOTYPES.items()
        }
        for name in embeddings
    }


def main(label: str, **kwargs) -> None:
    torch.set_num_threads(1)
    adata = ad.read_h5ad(DATA)
    labels = kwargs.pop("labels", False)
    ArmedImage.setup_anndata(
        adata, image_key="image", batch_key="batch", labels_key="label" if labels else None
    )
    # seed=N trains another seed; the pixel PCA and the folds stay those of SEED.
    model, seconds, arguments = train_armed_image(adata, SEED, **kwargs)
    embeddings = {
        "raw pixels (PCA 50)": pixel_pca(adata.obsm["image"], SEED),
        "z_FE": model.get_latent_representation(kind="fe"),
        "z_RE": model.get_latent_representation(kind="re"),
    }
    plate = adata.obs["batch"].to_numpy()
    phenotype = adata.obs["label"].to_numpy()
    cells = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    row = {
        "arguments": {**arguments, "labels": labels},
        "train_seconds": seconds,
        "epochs": model.train_params_["epochs_trained"],
        "probes": {
            name: {
                "plate": probe(x, plate, cells),
                "phenotype": probe(x, phenotype, LeaveOneGroupOut(), plate),
            }
            for name, x in embeddings.items()
        },
        "plate within": plate_within_phenotypes(adata, embeddings),
    }
    path = RESULTS / f"{STEM}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    payload["machine"] = machine()
    payload["runs"][label] = row
    write_results(STEM, payload, table(payload))


if __name__ == "__main__":
    args = sys.argv[1:] or ["current"]
    main(args[0], **{k: parse_value(v) for k, v in (a.split("=", 1) for a in args[1:])})
