"""A diverging run stops with a named error; no non-finite output reaches the AnnData or a file."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAST, assert_unchanged, snapshot

import armed_bio as ab
from armed_bio.train import TrainingDivergedError
from armed_bio.train._divergence import DivergenceGuard


def _model(sim):
    ab.model.ArmedRNA.setup_anndata(sim, batch_key="batch")
    return ab.model.ArmedRNA(sim, seed=0)


def test_a_diverging_run_stops_with_the_step_the_terms_and_the_fix(sim):
    model = _model(sim)
    before = snapshot(sim)
    with pytest.raises(TrainingDivergedError) as err:
        model.train(max_epochs=5, plan_kwargs={"lr": 100.0}, **FAST)
    message = str(err.value)
    assert message.startswith("Training diverged at step ")
    assert "(epoch 1 of 5)" in message
    assert "reconstruction_loss" in message
    assert "became non-finite (NaN or inf)" in message
    assert "lr=100" in message
    assert "plan_kwargs={'lr': ...}" in message
    # Rolled back to finite weights, not marked trained: nothing can be read or written.
    assert all(torch.isfinite(p).all() for p in model.module.parameters())
    assert not model.is_trained_
    with pytest.raises(RuntimeError, match="untrained model"):
        model.write_to_adata()
    assert_unchanged(sim, before)


def test_the_same_model_trains_after_lowering_the_learning_rate(sim):
    model = _model(sim)
    with pytest.raises(TrainingDivergedError):
        model.train(max_epochs=2, plan_kwargs={"lr": 100.0}, **FAST)
    model.train(max_epochs=2, **FAST)
    assert model.is_trained_
    assert math.isfinite(float(model.history_["train_loss"].iloc[-1, 0]))


def _poisoned(sim):
    """A trained model whose weights were then made non-finite."""
    model = _model(sim)
    model.train(max_epochs=1, **FAST)
    with torch.no_grad():
        model.module.encoder.parameters().__next__().fill_(float("nan"))
    return model


def test_non_finite_outputs_are_never_written(sim, tmp_path):
    model = _poisoned(sim)
    before = snapshot(sim)
    with pytest.raises(FloatingPointError, match=r"not written to adata.obsm\['X_armed_fe'\]"):
        model.write_to_adata()
    with pytest.raises(FloatingPointError, match=r"not written to adata.layers\['free'\]"):
        model.get_counterfactual_expression(layer_key="free")
    assert_unchanged(sim, before)
    with pytest.raises(FloatingPointError, match="weights .* are not finite .* was not saved"):
        model.save(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_the_guard_keeps_the_first_bad_step_and_its_terms():
    guard = DivergenceGuard()
    one = torch.ones(())
    assert guard.record(0, {"a": one, "b": one}) is True  # on the CPU it looks every step
    assert guard.first_bad() is None
    guard.record(1, {"a": one, "b": torch.tensor(float("inf"))})
    guard.record(2, {"a": torch.tensor(float("nan")), "b": one})
    assert guard.first_bad() == (1, ["b"])
    guard.reset()
    assert guard.first_bad() is None
