"""Counterfactual and normalised expression: definitions, chunking, truth, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, assert_unchanged, snapshot

import armed_bio as ab
from armed_bio.model import ArmedRNA


@pytest.fixture(scope="module")
def model():
    adata = ab.datasets.simulate_counts(
        n_cells=500, n_genes=50, n_batches=3, n_cell_types=3, batch_effect_sd=1.0, seed=2
    )
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=0)
    model.train(max_epochs=40, **FAST)
    return model


def test_batch_free_expression_is_the_z_zero_decode(model):
    adata = model.adata
    result = model.get_counterfactual_expression(batch=None)
    assert result.shape == adata.shape
    assert list(result.index) == list(adata.obs_names)
    x = torch.as_tensor(adata.X.toarray())
    with torch.no_grad():
        inf = model.module.inference(x, None, design=torch.zeros(adata.n_obs, 3))
        eta = model.module.generative(inf["z"], inf["library"], None)
    expected = torch.softmax(eta["eta_fe"], -1).numpy() * 1e4
    np.testing.assert_allclose(result.to_numpy(), expected, rtol=1e-4)


def test_counterfactual_in_own_batch_equals_normalised_expression(model):
    cells = np.flatnonzero(model.adata.obs["batch"] == "batch_1")
    own = model.get_normalized_expression(indices=cells)
    as_batch_1 = model.get_counterfactual_expression(batch="batch_1", indices=cells)
    np.testing.assert_allclose(own.to_numpy(), as_batch_1.to_numpy(), rtol=1e-5)
    as_batch_2 = model.get_counterfactual_expression(batch="batch_2", indices=cells)
    assert not np.allclose(as_batch_2.to_numpy(), own.to_numpy(), rtol=1e-2)


def test_chunking_genes_and_library_options(model):
    full = model.get_counterfactual_expression(batch="batch_0", batch_size=1000)
    chunked = model.get_counterfactual_expression(batch="batch_0", batch_size=7)
    np.testing.assert_allclose(full.to_numpy(), chunked.to_numpy(), rtol=1e-5)
    genes = ["gene_3", "gene_0"]
    sub = model.get_counterfactual_expression(batch="batch_0", gene_list=genes, indices=[4, 2])
    np.testing.assert_allclose(sub.to_numpy(), full.iloc[[4, 2]][genes].to_numpy(), rtol=1e-5)
    assert list(sub.columns) == genes
    observed = model.get_counterfactual_expression(batch=None, library_size="observed")
    np.testing.assert_allclose(observed.sum(1), np.asarray(model.adata.X.sum(1)).ravel(), rtol=1e-3)
    streamed = list(model.iter_counterfactual_expression(batch="batch_0", batch_size=128))
    assert [len(names) for names, _ in streamed] == [128, 128, 128, 116]
    np.testing.assert_allclose(np.vstack([v for _, v in streamed]), full.to_numpy(), rtol=1e-5)


def test_layer_key_writes_a_layer(model):
    adata = model.adata.copy()
    result = model.get_counterfactual_expression(adata, batch=None, layer_key="armed_batch_free")
    np.testing.assert_array_equal(adata.layers["armed_batch_free"], result.to_numpy())
    with pytest.raises(ValueError, match="without indices and gene_list"):
        model.get_counterfactual_expression(adata, batch=None, indices=[0], layer_key="x")


def _centred_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation over cells x genes after removing each gene's mean (its baseline)."""
    return float(np.corrcoef((a - a.mean(0)).ravel(), (b - b.mean(0)).ravel())[0, 1])


def test_counterfactuals_recover_the_simulated_truth(model):
    """Predicted batch-free / other-batch expression vs the simulation's known truth."""
    adata = model.adata
    effect = adata.varm["true_batch_effect"]  # genes x batches, log fold changes
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    batches = adata.obs["batch"].cat.codes.to_numpy()
    true_free = adata.varm["true_log_profile"].T[types]
    counts = adata.X.toarray()
    observed = np.log((counts + 0.5) / counts.sum(1, keepdims=True))  # the naive estimate
    predicted_free = np.log(model.get_counterfactual_expression(batch=None).to_numpy() / 1e4)
    assert _centred_corr(true_free, predicted_free) > _centred_corr(true_free, observed) + 0.03
    for k in range(3):
        true_k = true_free + effect[:, k]
        true_k -= np.log(np.exp(true_k).sum(1, keepdims=True))
        as_k = np.log(model.get_counterfactual_expression(batch=f"batch_{k}").to_numpy() / 1e4)
        other = batches != k  # cells measured elsewhere, moved to batch k
        assert _centred_corr(true_k[other], as_k[other]) > (
            _centred_corr(true_k[other], observed[other]) + 0.03
        )
        # The predicted effect of moving cells from Z = 0 to batch k tracks the true effect.
        lfc = (as_k - predicted_free).mean(0)
        assert np.corrcoef(lfc - lfc.mean(), effect[:, k])[0, 1] > 0.8


def test_unseen_query_batch_routes_are_logged(model, caplog):
    query = model.adata[:20].copy()
    query.obs["batch"] = pd.Categorical(["new_plate"] * 20)
    with caplog.at_level(logging.INFO, logger="armed_bio"):
        model.get_normalized_expression(query)
        model.get_counterfactual_expression(query, batch="batch_0")
    assert "Expression in their own batch of 20 cells: 20 of unseen batches ['new_plate']" in (
        caplog.text
    )
    assert "Expression as batch 'batch_0' of 20 cells; their own batch is not used" in caplog.text
    missing = query.copy()
    del missing.obs["batch"]
    assert model.get_normalized_expression(missing).shape == (20, 50)


@pytest.mark.parametrize(
    ("make_query", "error", "match"),
    [
        (lambda a: a[:, 1:].copy(), ValueError, "lacks 1 of the model's 50 genes"),
        (lambda a: _with_extra_gene(a), ValueError, "1 genes the model was not trained on"),
        (lambda a: a[:, a.var_names[::-1]].copy(), ValueError, "different order"),
    ],
)
def test_query_genes_must_match(model, make_query, error, match):
    query = make_query(model.adata[:30].copy())
    snap = snapshot(query)
    for call in (
        lambda: model.get_latent_representation(query),
        lambda: model.get_counterfactual_expression(query, batch=None),
        lambda: model.predict_batch_proba(query),
        lambda: model.adapt(query, progress_bar=False),
    ):
        with pytest.raises(error, match=match):
            call()
    assert_unchanged(query, snap)


def _with_extra_gene(adata):
    import anndata
    from scipy import sparse

    extra = anndata.AnnData(
        X=sparse.csr_matrix(np.ones((adata.n_obs, 1), dtype=np.float32)),
        obs=adata.obs[[]],
        var=pd.DataFrame(index=["extra_gene"]),
    )
    joined = anndata.concat([adata, extra], axis=1)
    joined.obs = adata.obs.copy()
    return joined


def test_bad_batch_indices_genes_and_library(model):
    adata = model.adata
    snap = snapshot(adata)
    with pytest.raises(ValueError, match="not a batch the model knows"):
        model.get_counterfactual_expression(batch="batch_9")
    with pytest.raises(IndexError, match="outside 0..499"):
        model.get_counterfactual_expression(batch=None, indices=[0, 500])
    with pytest.raises(IndexError, match="outside"):
        model.get_latent_representation(indices=[-1])
    with pytest.raises(TypeError, match="integer cell positions"):
        model.get_latent_representation(indices=[0.5, 1.0])
    with pytest.raises(ValueError, match="one entry per cell"):
        model.get_latent_representation(indices=np.ones(3, dtype=bool))
    with pytest.raises(KeyError, match="not among the model's genes"):
        model.get_counterfactual_expression(batch=None, gene_list=["gene_0", "CD3E"])
    with pytest.raises(ValueError, match="library_size"):
        model.get_counterfactual_expression(batch=None, library_size=-1)
    with pytest.raises(ValueError, match="batch_size"):
        model.get_counterfactual_expression(batch=None, batch_size=0)
    nan_query = adata[:10].copy()
    nan_query.X = nan_query.X.toarray()
    nan_query.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.get_latent_representation(nan_query)
    assert_unchanged(adata, snap)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[[3, 7]] = True
    np.testing.assert_array_equal(
        model.get_latent_representation(indices=mask),
        model.get_latent_representation(indices=[3, 7]),
    )
