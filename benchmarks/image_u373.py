"""ArmedImage with its defaults on the live-cell U373 movies: wall time and what its latent keeps.

The conv autoencoder is trained with its defaults on all 2,222 crops
(``../shared/data/ctc_u373_crops.h5ad``: 3 movies = batches, 1 x 96 x 96), as a user would
run it. A fresh logistic regression (standardised input) then predicts the movie and the
shape label from each embedding, scored by balanced accuracy with **time-block**
cross-validation: the 115 frames are cut into 5 blocks of consecutive frames and each block is
held out in turn, because the same cells recur from frame to frame (a random split would let
the probe recognise cells). Chance: movie 0.33, shape 0.50.

The movies hold different cells (6-7 per frame, a dozen tracks per movie), so the cells'
outlines alone tell the movies apart: the **cell outline** embedding (PCA 50 of the binary
focal-object masks in ``obsm['mask']`` plus the mask's area, perimeter, eccentricity,
solidity, circularity and crop fraction; no pixel intensities) is a floor for a latent that
keeps morphology. "outline + X" probes the outline with embedding ``X`` beside it: what
``X`` tells of the movie beyond the cells' outlines.

Run: ``.venv/bin/python benchmarks/image_u373.py LABEL [name=value ...]`` (model or training
arguments, e.g. ``decoder_upsampling=nearest`` for the 0.4 decoder, ``max_epochs=30``); each
label is kept as one row.
"""

from __future__ import annotations

import json
import sys

import anndata as ad
import numpy as np
import torch
from _common import (
    RESULTS,
    SHARED,
    machine,
    parse_value,
    pixel_pca,
    train_armed_image,
    write_results,
)
from _common import probe as fold_probe
from sklearn.model_selection import GroupKFold

from armed_bio.model import ArmedImage

STEM = "image_u373"
SEED = 0
N_BLOCKS = 5
#: Mask-derived shape features in ``obs`` (no pixel intensities).
OUTLINE_FEATURES = [
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "circularity",
    "mask_fraction_in_crop",
]


def probe(x: np.ndarray, y: np.ndarray, blocks: np.ndarray) -> float:
    """Balanced accuracy of a logistic regression under time-block cross-validation."""
    return fold_probe(x, y, GroupKFold(n_splits=N_BLOCKS), blocks)


def table(payload: dict) -> str:
    """The markdown table of every labelled run in ``payload``."""
    lines = [
        "# ArmedImage defaults on the U373 live-cell movies\n",
        "2,222 crops (1 x 96 x 96), 3 movies; CPU, one torch thread. Probes: logistic regression,"
        " balanced accuracy, 5 time-block folds (chance: movie 0.33, shape 0.50). Command: "
        "`.venv/bin/python benchmarks/image_u373.py LABEL`.\n",
        "| run | train time | epochs | movie from z_FE | movie from pixels | movie from z_RE "
        "| shape from z_FE | shape from pixels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lab, r in payload["runs"].items():
        p = r["probes"]
        lines.append(
            f"| {lab} | {r['train_seconds'] / 60:.1f} min | {r['epochs']} | "
            f"{p['z_FE']['movie']:.3f} | {p['raw pixels (PCA 50)']['movie']:.3f} | "
            f"{p['z_RE']['movie']:.3f} | {p['z_FE']['shape']:.3f} | "
            f"{p['raw pixels (PCA 50)']['shape']:.3f} |"
        )
    outline = {lab: r for lab, r in payload["runs"].items() if "cell outline" in r["probes"]}
    if outline:
        names = ["cell outline", "outline + z_FE", "outline + raw pixels (PCA 50)"]
        lines += [
            "\n## The movie beyond the cells' outlines\n",
            "Cell outline: PCA 50 of the focal-object masks + 6 mask shape features (no "
            "intensities). Same time-block folds.\n",
            "| run | " + " | ".join(f"movie from {n}" for n in names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for lab, r in outline.items():
            cells = [r["probes"][n]["movie"] for n in names]
            lines.append(f"| {lab} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cell_outline(adata: ad.AnnData) -> np.ndarray:
    """The focal objects' masks (PCA 50) and mask shape features: morphology, no intensity."""
    features = adata.obs[OUTLINE_FEATURES].to_numpy(dtype=float)
    return np.hstack([pixel_pca(adata.obsm["mask"], SEED), features])


def main(label: str, **kwargs) -> None:
    torch.set_num_threads(1)
    adata = ad.read_h5ad(SHARED / "ctc_u373_crops.h5ad")
    blocks = np.minimum(adata.obs["frame"].to_numpy() * N_BLOCKS // 115, N_BLOCKS - 1)
    ArmedImage.setup_anndata(adata, image_key="image", batch_key="batch")
    # seed=N trains another seed; the pixel PCA and the folds stay those of SEED.
    model, seconds, arguments = train_armed_image(adata, SEED, **kwargs)
    epochs = model.train_params_["epochs_trained"]
    embeddings = {
        "raw pixels (PCA 50)": pixel_pca(adata.obsm["image"], SEED),
        "z_FE": model.get_latent_representation(kind="fe"),
        "z_RE": model.get_latent_representation(kind="re"),
    }
    outline = cell_outline(adata)
    embeddings["cell outline"] = outline
    for name in ("z_FE", "raw pixels (PCA 50)"):
        embeddings[f"outline + {name}"] = np.hstack([outline, embeddings[name]])
    movie = adata.obs["batch"].to_numpy()
    shape = adata.obs["shape"].to_numpy()
    row = {
        "arguments": arguments,
        "train_seconds": seconds,
        "epochs": epochs,
        "probes": {
            name: {"movie": probe(x, movie, blocks), "shape": probe(x, shape, blocks)}
            for name, x in embeddings.items()
        },
    }
    path = RESULTS / f"{STEM}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    payload["machine"] = machine()
    payload["runs"][label] = row
    write_results(STEM, payload, table(payload))


if __name__ == "__main__":
    args = sys.argv[1:] or ["current"]
    main(args[0], **{k: parse_value(v) for k, v in (a.split("=", 1) for a in args[1:])})
