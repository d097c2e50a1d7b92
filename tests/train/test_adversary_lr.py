"""The adversary's learning-rate ramp (``plan_kwargs={"adversary_lr_end": ...}``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST

import armed_bio as ab
from armed_bio.model import ArmedRNA
from armed_bio.train import ArmedTrainingPlan


def test_ramp_is_flat_in_warmup_then_geometric_to_the_end():
    adata = ab.datasets.simulate_counts(n_cells=100, n_genes=20, n_batches=2, seed=0)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    plan = ArmedTrainingPlan(ArmedRNA(adata).module, adversary_lr=1e-3, adversary_lr_end=1e-2)
    plan.n_steps_total, plan.n_steps_adversary_warmup = 101, 20
    lrs = {}
    for step in (0, 20, 60, 100, 150):
        plan.armed_step = step
        lrs[step] = plan.current_adversary_lr()
    assert lrs[0] == lrs[20] == pytest.approx(1e-3)  # flat while lambda_g warms up
    assert lrs[60] == pytest.approx(np.sqrt(1e-3 * 1e-2))  # half-way, geometrically
    assert lrs[100] == lrs[150] == pytest.approx(1e-2)
    constant = ArmedTrainingPlan(ArmedRNA(adata).module, adversary_lr=2e-3)
    constant.armed_step = 50
    assert constant.current_adversary_lr() == 2e-3


def test_training_with_the_ramp_steps_the_adversary_at_the_logged_rate():
    adata = ab.datasets.simulate_counts(n_cells=200, n_genes=30, n_batches=2, seed=0)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=0)
    plan = {"adversary_lr": 1e-3, "adversary_lr_end": 1e-2, "warmup_fraction": 0.2}
    model.train(max_epochs=10, seed=0, plan_kwargs=plan, **FAST)
    logged = model.history["adversary_lr"].to_numpy(dtype=float).ravel()
    assert logged[0] == pytest.approx(1e-3)  # the first epoch is inside the warm-up
    assert np.all(np.diff(logged) >= 0)
    assert 5e-3 < logged[-1] <= 1e-2  # the last epoch's mean rate, near the end value


def test_mixed_armed_rna_ramps_by_default_and_none_keeps_the_rate_constant():
    adata = ab.datasets.simulate_counts(n_cells=200, n_genes=30, n_batches=2, seed=0)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    ramped = ArmedRNA(adata, seed=0)
    ramped.train(max_epochs=8, seed=0, **FAST)
    logged = ramped.history["adversary_lr"].to_numpy(dtype=float).ravel()
    assert logged[0] == pytest.approx(3e-4)  # since 0.13 the ramp starts at 3e-4
    assert 5e-3 < logged[-1] <= 1e-2
    assert ramped.train_params_["plan_kwargs"] == {"adversary_lr": 3e-4, "adversary_lr_end": 0.01}
    assert ramped.run_record()["train"]["plan_kwargs"]["adversary_lr_end"] == 0.01
    v4 = ArmedRNA(adata, seed=0)
    v4.train(max_epochs=8, seed=0, plan_kwargs=ArmedRNA.plan_defaults_before_0_13, **FAST)
    assert v4.history["adversary_lr"].to_numpy(dtype=float).ravel()[0] == pytest.approx(1e-3)
    constant = ArmedRNA(adata, seed=0)
    constant.train(max_epochs=8, seed=0, plan_kwargs=ArmedRNA.plan_defaults_before_0_12, **FAST)
    assert "adversary_lr" not in constant.history  # logged only while it changes
    fe = {m: m.get_latent_representation(kind="fe") for m in (ramped, constant)}
    assert not np.allclose(fe[ramped], fe[constant])  # the ramp changes training
    # mode="fixed" keeps a constant rate (the ramp cost it CellBench's batch correction).
    fixed = ArmedRNA(adata, mode="fixed", seed=0)
    fixed.train(max_epochs=2, seed=0, **FAST)
    assert "adversary_lr" not in fixed.history
    assert fixed.train_params_["plan_kwargs"] == {}
