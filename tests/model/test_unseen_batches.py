"""Unseen batches: Z-predictor, calibration, soft-Z/Z=0 routes, label heads, adaptation."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, assert_unchanged, snapshot

import armed_bio as ab
from armed_bio.model import ArmedRNA
from armed_bio.train import fit_temperature


@pytest.fixture(scope="module")
def split():
    """4 simulated batches with strong effects; batch_3 is held out as the query."""
    adata = ab.datasets.simulate_counts(
        n_cells=600, n_genes=60, n_batches=4, n_cell_types=3, batch_effect_sd=1.0, seed=1
    )
    ref = adata[adata.obs["batch"] != "batch_3"].copy()
    query = adata[adata.obs["batch"] == "batch_3"].copy()
    ArmedRNA.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
    model = ArmedRNA(ref, seed=0)
    model.train(max_epochs=40, **FAST)
    return adata, model, query


def test_fit_temperature_softens_overconfident_logits():
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (500,), generator=gen)
    # Right 70% of the time but with huge logits: calibration must cool them (T > 1).
    pred = torch.where(torch.rand(500, generator=gen) < 0.7, targets, (targets + 1) % 3)
    logits = 20.0 * torch.nn.functional.one_hot(pred, 3).float()
    assert fit_temperature(logits, targets) > 5.0
    with pytest.raises(ValueError, match="at least one held-out cell"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0))


def test_batch_probabilities_are_calibrated_on_held_out_cells(split):
    _, model, _ = split
    proba = model.predict_batch_proba()
    assert list(proba.columns) == ["batch_0", "batch_1", "batch_2"]
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    accuracy = (proba.idxmax(1) == model.adata.obs["batch"].astype(str)).mean()
    assert accuracy > 0.9
    fitted = model.train_params_["z_temperature"]
    assert float(model.module.z_temperature) == pytest.approx(fitted)
    assert model.calibrate_batch_predictor(indices=np.sort(model.validation_indices)) == fitted


def test_calibration_refuses_cells_of_unseen_batches(split):
    _, model, query = split
    with pytest.raises(ValueError, match="batches seen in training"):
        model.calibrate_batch_predictor(query)


def test_fe_outputs_ignore_the_batch_label(split, caplog):
    _, model, query = split
    relabelled = query.copy()
    relabelled.obs["batch"] = "batch_0"
    with caplog.at_level(logging.INFO, logger="armed_bio"):
        fe_unseen = model.get_latent_representation(query, kind="fe")
    assert "their own batch is not used" in caplog.text
    assert "unseen batches ['batch_3']" in caplog.text
    np.testing.assert_allclose(fe_unseen, model.get_latent_representation(relabelled), atol=1e-6)
    np.testing.assert_array_equal(model.predict(query), model.predict(relabelled))


def test_unsure_cells_fall_back_to_z_zero(split, caplog):
    _, model, query = split
    x = torch.as_tensor(query.X.toarray())
    model.entropy_threshold = 0.0  # every unseen cell is "unsure"
    try:
        with caplog.at_level(logging.INFO, logger="armed_bio"):
            z_re = model.get_latent_representation(query, kind="re")
            me = model.predict(query, head="me", soft=True)
    finally:
        model.entropy_threshold = ab.model.ArmedRNA.entropy_threshold
    assert f"Z = 0 (fixed effects only) for {query.n_obs}" in caplog.text
    with torch.no_grad():
        zero = torch.zeros(query.n_obs, model.module.n_batch)
        expected = model.module.inference(x, None, design=zero)["z_re"].numpy()
    np.testing.assert_allclose(z_re, expected, atol=1e-5)
    # Z = 0 makes the mixed-effects head equal to the fixed-effects head.
    np.testing.assert_allclose(me, model.predict(query, soft=True), atol=1e-6)


def test_confident_cells_use_soft_z(split, caplog):
    _, model, query = split
    model.entropy_threshold = 1.0  # every unseen cell is "sure"
    try:
        with caplog.at_level(logging.INFO, logger="armed_bio"):
            z_re = model.get_latent_representation(query, kind="re")
    finally:
        model.entropy_threshold = ab.model.ArmedRNA.entropy_threshold
    assert f"soft Z from the Z-predictor for {query.n_obs}" in caplog.text
    proba = torch.as_tensor(model.predict_batch_proba(query).to_numpy())
    x = torch.as_tensor(query.X.toarray())
    with torch.no_grad():
        expected = model.module.inference(x, None, design=proba)["z_re"].numpy()
    np.testing.assert_allclose(z_re, expected, atol=1e-4)


def test_label_heads_predict_cell_types(split):
    _, model, query = split
    truth = query.obs["cell_type"].to_numpy()
    for kind in ("fe", "me"):
        assert (model.predict(query, head=kind) == truth).mean() > 0.9
    soft = model.predict(query, head="me", soft=True)
    assert list(soft.columns) == ["type_0", "type_1", "type_2"]
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-5)
    assert "label_accuracy_me_train" in model.history


def test_query_labels_with_unseen_categories_are_not_read(split):
    _, model, query = split
    odd = query.copy()
    odd.obs["cell_type"] = "a label the model never saw"
    snap = snapshot(odd)
    np.testing.assert_array_equal(model.predict(odd), model.predict(query))
    assert_unchanged(odd, snap)


def test_predict_errors(split, sim):
    _, model, query = split
    with pytest.raises(ValueError, match="head must be 'fe' or 'me'"):
        model.predict(query, head="re")
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    unlabelled = ArmedRNA(sim)
    unlabelled.train(max_epochs=1, **FAST)
    with pytest.raises(ValueError, match="no label head"):
        unlabelled.predict()


def test_adapt_fits_only_the_new_batches_rows(split):
    adata, model, query = split
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    adapted = model.adapt(query, max_epochs=30, progress_bar=False)
    # The reference model is untouched.
    assert model.module.n_batch == 3
    assert model.batch_categories_[-1] == "batch_2"
    for k, v in model.module.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert adapted.batch_categories_ == ["batch_0", "batch_1", "batch_2", "batch_3"]
    for name, value in adapted.module.state_dict().items():
        old = before[name]
        if value.shape == old.shape:
            torch.testing.assert_close(value, old, msg=name)  # shared weights frozen
        else:
            torch.testing.assert_close(value[:3], old, msg=name)  # seen rows unchanged
            assert value.shape[0] == 4
    # The new batch's offsets recover its true per-gene effect.
    effects = adapted.get_random_effects()
    offset = effects[
        (effects["layer"] == "decoder.output_offset") & (effects["batch"] == "batch_3")
    ]
    truth = pd.Series(adata.varm["true_batch_effect"][:, 3], index=adata.var_names)
    assert np.corrcoef(offset["mean"], truth[offset["unit"]])[0, 1] > 0.7
    assert adapted.adapt_params_["new_batches"] == ["batch_3"]
    with pytest.raises(RuntimeError, match="adapted to new batches"):
        adapted.train(max_epochs=1, **FAST)


def test_adapted_random_effects_fit_the_query_better(split):
    _, model, query = split
    adapted = model.adapt(query, max_epochs=30, progress_bar=False)
    observed = query.X.toarray()
    observed = np.log1p(observed / observed.sum(1, keepdims=True) * 1e4)

    def error(m):
        predicted = np.log1p(m.get_normalized_expression(query).to_numpy())
        return np.mean((predicted - observed) ** 2)

    assert error(adapted) < error(model)
    # Counterfactuals as the new batch are available, and as expected for its own cells.
    as_new = adapted.get_counterfactual_expression(query, batch="batch_3")
    np.testing.assert_allclose(as_new, adapted.get_normalized_expression(query), rtol=1e-4)


def test_adapt_is_reproducible_and_saved(split, tmp_path):
    _, model, query = split
    a = model.adapt(query, max_epochs=3, seed=5, progress_bar=False)
    b = model.adapt(query, max_epochs=3, seed=5, progress_bar=False)
    for (name, x), y in zip(
        a.module.state_dict().items(), b.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(x, y, msg=name)
    a.save(tmp_path / "adapted")
    loaded = ArmedRNA.load(tmp_path / "adapted", adata=model.adata)
    assert loaded.batch_categories_ == a.batch_categories_
    np.testing.assert_allclose(
        loaded.get_counterfactual_expression(query, batch="batch_3"),
        a.get_counterfactual_expression(query, batch="batch_3"),
        rtol=1e-5,
    )


def test_adapt_errors(split, sim):
    _, model, query = split
    with pytest.raises(ValueError, match="nothing to adapt"):
        model.adapt(model.adata, progress_bar=False)
    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="not a column"):
        model.adapt(no_batch, progress_bar=False)
    with pytest.raises(ValueError, match="max_epochs"):
        model.adapt(query, max_epochs=0, progress_bar=False)
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    fixed = ArmedRNA(sim, mode="fixed")
    fixed.train(max_epochs=1, **FAST)
    with pytest.raises(ValueError, match="mode='fixed'"):
        fixed.adapt(sim, progress_bar=False)


def test_random_effect_summaries(split):
    adata, model, _ = split
    table = model.get_random_effects()
    assert list(table.columns) == ["batch", "layer", "unit", "mean", "sd"]
    expected_rows = sum(
        m.loc.numel() for m in model.module.modules() if isinstance(m, ab.nn.RandomEffect)
    )
    assert len(table) == expected_rows
    assert (table["sd"] > 0).all()
    genes = table[table["layer"] == "decoder.output_offset"]["unit"]
    assert set(genes) == set(adata.var_names)
    variance = model.get_gene_batch_variance()
    assert variance["offset_variance"].is_monotonic_decreasing
    assert set(variance.index) == set(adata.var_names)
    # Genes the simulation shifts most between the seen batches rank high.
    true = pd.Series(adata.varm["true_batch_effect"][:, :3].var(1), index=adata.var_names)
    rho = variance["offset_variance"].rank().corr(true[variance.index].rank())
    assert rho > 0.5
