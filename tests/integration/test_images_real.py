"""End-to-end on real BBBC021 MCF-7 crops (../shared/data): train, predict, hold out a plate."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from conftest import FAST, shared_file
from sklearn.metrics import roc_auc_score

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedImageClassifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bbbc021():
    adata = ad.read_h5ad(shared_file("bbbc021_mcf7_crops_4plates.h5ad"))
    rng = np.random.default_rng(0)
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero((adata.obs["batch"] == p).to_numpy()), 250, replace=False)
                for p in adata.obs["batch"].cat.categories
            ]
        )
    )
    return adata[keep].copy()


def test_classifier_on_real_crops_with_an_unseen_plate(bbbc021, tmp_path):
    held_plate = "Week4_27521"  # DMSO only: every crop of it should be called DMSO
    mixed = "Week4_27821"
    is_held = (bbbc021.obs["batch"] == held_plate).to_numpy()
    test_mixed = (bbbc021.obs["batch"] == mixed).to_numpy() & (np.arange(bbbc021.n_obs) % 4 == 0)
    train = bbbc021[~is_held & ~test_mixed].copy()
    train.obs["batch"] = train.obs["batch"].astype(str).astype("category")
    ArmedImageClassifier.setup_anndata(train, batch_key="batch", labels_key="label")
    model = ArmedImageClassifier(train, seed=0)
    model.train(max_epochs=8, seed=0, **FAST)
    query = bbbc021[is_held].copy()
    pred = model.predict(query, head="me")
    assert (pred == "DMSO").mean() > 0.7
    seen = bbbc021[test_mixed].copy()
    proba = model.predict(seen, head="fe", soft=True)["Protein synthesis"]
    assert roc_auc_score(seen.obs["label"] == "Protein synthesis", proba) > 0.8
    out = model.write_to_adata(query)
    out.write_h5ad(tmp_path / "annotated.h5ad")
    back = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert back.obsm["X_armed_fe"].shape == (query.n_obs, 32)
    assert back.uns["armed"]["model"] == "ArmedImageClassifier"


def test_autoencoder_renders_real_crops_as_each_plate(bbbc021, tmp_path):
    adata = bbbc021.copy()
    ArmedImage.setup_anndata(adata, batch_key="batch")
    model = ArmedImage(adata, seed=0)
    model.train(max_epochs=3, seed=0, **FAST)
    model.write_to_adata()
    assert adata.obsm["X_armed_re"].shape == (adata.n_obs, 8)
    fig = ab.pl.image_counterfactuals(
        model, cells=[0, 300], save=tmp_path / "cf.png", return_fig=True
    )
    assert len(fig.axes) == 2 * 6
    free = model.get_counterfactual_images(indices=[0, 1])
    assert free.shape == (2, 3, 68, 68)
    assert np.isfinite(free).all()
