# %% [markdown]
# # ARMED for microscopy: from whole fields to batch-free cells
#
# This tutorial runs end to end on simulated fields with known batch effects (no download):
#
# 1. segment nuclei in whole fields and cut single-cell crops (`armed_bio.pp.crop_objects`);
# 2. measure image quality per crop (`armed_bio.pp.image_qc`): the batches differ;
# 3. train the mixed-effects conv autoencoder `ArmedImage` and render each cell as imaged in
#    every batch, and batch-free;
# 4. train the mixed-effects CNN `ArmedImageClassifier` on a phenotype and predict it for a
#    batch never seen in training (the Z-predictor route).
#
# Run it as a script (`python tutorials/microscopy.py --out tutorial_output`) or open it as a
# notebook with jupytext. On real crops (e.g. `../shared/data/bbbc021_mcf7_crops_4plates.h5ad`)
# start at step 3 with `adata.obsm["image"]` already filled.

# %%
import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import torch

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedImageClassifier

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="tutorial_output")
parser.add_argument("--epochs", type=int, default=30)
args, _ = parser.parse_known_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
train_kwargs = {"accelerator": "cpu", "enable_progress_bar": False, "seed": 0}

# %% [markdown]
# ## 1. Fields -> crops
# Nine fields in three batches; each batch has its own illumination gradient, gain and
# background. The simulator also returns where every nucleus is, to check the segmentation.

# %%
fields, batches, truth = ab.datasets.simulate_fields(
    n_fields=9, n_batches=3, n_nuclei=30, size=(160, 160), seed=0
)
adata = ab.pp.crop_objects(fields, batch=batches, crop_size=24, progress_bar=False)
print(adata)
print("segmentation vs truth:", ab.metrics.match_objects(adata.obs, truth, max_distance=3))

# The phenotype of each crop (small or large nucleus), from the simulator's truth.
nearest = [
    truth.loc[truth["field"] == r.field]
    .assign(d=lambda t, r=r: np.hypot(t.y - r.centroid_y, t.x - r.centroid_x))
    .nsmallest(1, "d")["phenotype"]
    .item()
    for r in adata.obs.itertuples()
]
adata.obs["phenotype"] = pd.Categorical(nearest)

# %% [markdown]
# ## 2. Quality control: the batches differ in brightness and contrast

# %%
ab.pp.image_qc(adata)
print(adata.obs.groupby("batch", observed=True)[["qc_brightness_ch0", "qc_contrast_ch0"]].mean())

# %% [markdown]
# ## 3. Mixed-effects autoencoder: counterfactual images
# `z_FE` (batch-invariant) goes to `.obsm["X_armed_fe"]`, `z_RE` to `.obsm["X_armed_re"]`.

# %%
ArmedImage.setup_anndata(adata, image_key="image", batch_key="batch")
ae = ArmedImage(adata, channels=(16, 32, 32), seed=0)
ae.train(max_epochs=args.epochs, batch_size=64, **train_kwargs)
ae.write_to_adata()
ab.pl.image_counterfactuals(
    ae, cells=[0, 40, 80], show=False, save=out / "image_counterfactuals.png"
)
print(
    ab.metrics.cluster_scores(adata, ["X_armed_fe", "X_armed_re"], "batch", "phenotype")[
        ["silhouette_batch", "silhouette_label"]
    ]
)

# %% [markdown]
# ## 4. Mixed-effects CNN on a batch it has never seen
# Train on batches 0 and 1, predict batch 2: its crops have no random effects, so the
# Z-predictor decides per crop between a soft mixture of the seen batches and `Z = 0`.

# %%
seen = adata[adata.obs["batch"] != "batch_2"].copy()
seen.obs["batch"] = seen.obs["batch"].astype(str).astype("category")
unseen = adata[adata.obs["batch"] == "batch_2"].copy()
ArmedImageClassifier.setup_anndata(seen, batch_key="batch", labels_key="phenotype")
clf = ArmedImageClassifier(seen, channels=(16, 32, 32), seed=0)
clf.train(max_epochs=args.epochs, batch_size=64, **train_kwargs)
for kind in ("fe", "me"):
    acc = (clf.predict(unseen, head=kind) == unseen.obs["phenotype"].to_numpy()).mean()
    print(f"{kind.upper()} head accuracy on the unseen batch: {acc:.3f}")
adata.write_h5ad(out / "microscopy_armed.h5ad")
