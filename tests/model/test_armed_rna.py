"""ArmedRNA on small simulated data: modes, likelihoods, outputs, save/load, seeds, stopping."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch
from conftest import FAST

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedRNA
from armed_bio.model._base import default_max_epochs

# The mixed model's adversary width since 0.13.0 (ArmedVAEModule's default).
DEFAULT_ADVERSARY_HIDDEN = 256


@pytest.mark.parametrize(
    ("mode", "likelihood"),
    [
        ("mixed", "nb"),
        ("mixed", "zinb"),
        ("mixed", "poisson"),
        ("mixed", "gaussian"),
        ("fixed", "nb"),
        ("random", "nb"),
    ],
)
def test_modes_and_likelihoods_train(sim, mode, likelihood):
    if likelihood == "gaussian":
        sim.layers["log"] = sim.X.copy()
        sc.pp.normalize_total(sim, target_sum=1e4, layer="log")
        sc.pp.log1p(sim, layer="log")
    layer = "log" if likelihood == "gaussian" else None
    ArmedRNA.setup_anndata(sim, batch_key="batch", layer=layer)
    model = ArmedRNA(sim, mode=mode, likelihood=likelihood, n_latent=4, n_latent_re=3)
    model.train(max_epochs=2, **FAST)
    fe = model.get_latent_representation(kind="fe")
    assert fe.shape == (sim.n_obs, 4)
    assert np.isfinite(fe).all()
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    has_adversary = mode != "random"
    assert ("adversary_ce_train" in model.history) == has_adversary
    if mode == "fixed":
        with pytest.raises(ValueError, match="no random-effects encoder"):
            model.get_latent_representation(kind="re")
    else:
        assert model.get_latent_representation(kind="re").shape == (sim.n_obs, 3)


def test_write_to_adata_and_h5ad_roundtrip(trained, tmp_path):
    adata = trained.adata
    trained.write_to_adata()
    assert adata.obsm["X_armed_fe"].shape == (adata.n_obs, 10)
    assert adata.obsm["X_armed_re"].shape == (adata.n_obs, 5)
    record = adata.uns["armed"]
    assert record["model"] == "ArmedRNA"
    assert record["setup"]["batch_key"] == "batch"
    assert record["batch_categories"] == ["batch_0", "batch_1", "batch_2"]
    assert record["train"]["max_epochs"] == 3
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = sc.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(back.obsm["X_armed_fe"], adata.obsm["X_armed_fe"])
    assert back.uns["armed"]["params"]["mode"] == "mixed"


def test_latent_on_new_anndata_with_same_genes(trained):
    sub = trained.adata[:50].copy()
    np.testing.assert_allclose(
        trained.get_latent_representation(sub),
        trained.get_latent_representation(indices=np.arange(50)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_save_load_gives_identical_latents_and_adversary(trained, tmp_path):
    trained.save(tmp_path / "m", save_anndata=True)
    loaded = ArmedRNA.load(tmp_path / "m")
    for kind in ("fe", "re"):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(kind=kind),
            trained.get_latent_representation(kind=kind),
        )
    state = loaded.module.state_dict()
    assert any(k.startswith("adversary.") for k in state)
    for key, value in trained.module.state_dict().items():
        torch.testing.assert_close(state[key], value)
    assert loaded.train_params_ == trained.train_params_
    assert list(loaded.history["train_loss"].index) == list(trained.history["train_loss"].index)
    # Load onto a user's AnnData too.
    again = ArmedRNA.load(tmp_path / "m", adata=trained.adata.copy())
    np.testing.assert_array_equal(
        again.get_latent_representation(), trained.get_latent_representation()
    )


def test_models_saved_before_0_3_load_with_their_own_defaults(sim, tmp_path):
    """A 0.2.0 file records only the arguments given: the rest must take 0.2.0's defaults."""
    import json

    from armed_bio.module import ArmedVAEModule

    old = ArmedVAEModule.defaults_before_0_3
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    model = ArmedRNA(sim, seed=0, **old)  # what ArmedRNA(sim) built in 0.2.0
    model.train(max_epochs=2, seed=0, **FAST)
    model.save(tmp_path / "m")
    attrs_file = tmp_path / "m" / "attributes.json"
    attrs = json.loads(attrs_file.read_text())
    assert attrs["module_arguments_"]["adversary_clusters"] == 0
    # As 0.2.0 wrote it: no module_arguments_, and no explicit argument for the defaults.
    del attrs["module_arguments_"]
    attrs["init_params_"]["kwargs"]["module_kwargs"] = {}
    attrs_file.write_text(json.dumps(attrs))
    loaded = ArmedRNA.load(tmp_path / "m", adata=sim)
    assert loaded.module.n_adversary_clusters == 0
    assert not loaded.module.centre_random_effects
    assert loaded.module.fe_reconstruction_weight == old["fe_reconstruction_weight"]
    np.testing.assert_array_equal(
        loaded.get_counterfactual_expression(sim, batch="batch_1").to_numpy(),
        model.get_counterfactual_expression(sim, batch="batch_1").to_numpy(),
    )
    # A file of this release loads with every argument as it was, whatever the defaults.
    model.save(tmp_path / "new")
    again = json.loads((tmp_path / "new" / "attributes.json").read_text())
    assert again["module_arguments_"]["centre_random_effects"] is False
    assert ArmedRNA.load(tmp_path / "new", adata=sim).module.n_adversary_clusters == 0


def test_the_adversary_size_is_an_argument_and_older_files_load_their_own(sim, tmp_path):
    """``adversary_hidden`` / ``adversary_layers`` shape the adversary.

    A file written before they existed (0.12) loads the 64-unit, one-layer adversary it was
    trained with.
    """
    import json

    from armed_bio.module import ArmedVAEModule

    ArmedRNA.setup_anndata(sim, batch_key="batch")

    def widths(module) -> list[int]:
        layers = module.adversary.modules()
        return [m.out_features for m in layers if isinstance(m, torch.nn.Linear)]

    n_batch = 3
    assert widths(ArmedRNA(sim, seed=0, adversary_hidden=32, adversary_layers=2).module) == [
        32,
        32,
        n_batch,
    ]
    assert widths(ArmedRNA(sim, seed=0).module) == [DEFAULT_ADVERSARY_HIDDEN, n_batch]
    # mode="fixed" keeps the 64-unit adversary (the wider one cost it CellBench's Total).
    assert widths(ArmedRNA(sim, mode="fixed", seed=0).module) == [64, n_batch]
    old = ArmedRNA(sim, seed=0, **ArmedVAEModule.defaults_before_0_13)
    assert widths(old.module) == [64, n_batch]
    old.train(max_epochs=2, seed=0, **FAST)
    old.save(tmp_path / "m")
    attrs_file = tmp_path / "m" / "attributes.json"
    attrs = json.loads(attrs_file.read_text())
    for name in ("adversary_hidden", "adversary_layers"):  # as 0.12 wrote it
        del attrs["module_arguments_"][name]
        attrs["init_params_"]["kwargs"]["module_kwargs"].pop(name, None)
    attrs_file.write_text(json.dumps(attrs))
    loaded = ArmedRNA.load(tmp_path / "m", adata=sim)
    assert widths(loaded.module) == [64, n_batch]
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), old.get_latent_representation()
    )


def test_save_refuses_non_empty_dir_and_load_checks_genes(trained, tmp_path):
    trained.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "m")
    trained.save(tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match="No AnnData given"):
        ArmedRNA.load(tmp_path / "m")
    reordered = trained.adata[:, ::-1].copy()
    with pytest.raises(ValueError, match="var_names differ"):
        ArmedRNA.load(tmp_path / "m", adata=reordered)
    with pytest.raises(FileNotFoundError, match="does not hold an armed_bio model"):
        ArmedRNA.load(tmp_path / "nothing", adata=trained.adata)


class _Payload:
    """Unpickling this object would create a file: loading must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_never_unpickles_code(trained, tmp_path):
    trained.save(tmp_path / "m")
    marker = tmp_path / "pwned"
    torch.save(
        {"format": "armed_bio.model/1", "model_state_dict": _Payload(str(marker)), "var_names": []},
        tmp_path / "m" / "model.pt",
    )
    with pytest.raises(ValueError, match="not loaded"):
        ArmedRNA.load(tmp_path / "m", adata=trained.adata)
    assert not marker.exists()


def _fit(adata, seed):
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=seed)
    model.train(max_epochs=2, seed=seed, **FAST)
    return model.get_latent_representation(), model.get_latent_representation(kind="re")


def test_same_seed_same_latents():
    make = lambda: ab.datasets.simulate_counts(n_cells=200, n_genes=40)  # noqa: E731
    fe1, re1 = _fit(make(), seed=3)
    fe2, re2 = _fit(make(), seed=3)
    np.testing.assert_array_equal(fe1, fe2)
    np.testing.assert_array_equal(re1, re2)
    fe3, _ = _fit(make(), seed=4)
    assert not np.allclose(fe1, fe3)


def test_early_stopping_fires_on_logged_validation_loss(sim):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    model = ArmedRNA(sim)
    model.train(
        max_epochs=300,
        early_stopping=True,
        early_stopping_patience=2,
        early_stopping_min_delta=1e6,
        **FAST,
    )
    # min_delta is huge, so no epoch counts as an improvement: it must stop after patience.
    assert "elbo_validation" in model.history
    assert model.train_params_["epochs_trained"] <= 4


def test_adversary_is_not_in_the_main_optimizer(trained):
    plan = trained._training_plan_cls(trained.module)
    main, adversary = plan.configure_optimizers()
    main_ids = {id(p) for group in main.param_groups for p in group["params"]}
    adv_ids = {id(p) for p in trained.module.adversary.parameters()}
    assert adv_ids.isdisjoint(main_ids)
    assert adv_ids == {id(p) for group in adversary.param_groups for p in group["params"]}
    rest = {id(p) for n, p in trained.module.named_parameters() if not n.startswith("adversary.")}
    assert rest == main_ids


def test_default_epochs_target_steps():
    assert default_max_epochs(1021, 128) == 188  # 8 steps per epoch
    assert default_max_epochs(8684, 128) == 25
    assert default_max_epochs(1_000_000, 128) == 1
    assert default_max_epochs(10, 128) == 500  # capped


def test_rna_default_epochs_have_a_floor_that_tapers_on_large_data():
    floor = ArmedRNA._default_min_epochs
    assert floor == 75
    assert default_max_epochs(1021, 128, min_epochs=floor) == 188  # 1,500 steps is more
    assert default_max_epochs(8684, 128, min_epochs=floor) == 75  # the floor
    assert default_max_epochs(100_000, 128, min_epochs=floor) == 75
    assert default_max_epochs(1_000_000, 128, min_epochs=floor) == 8  # tapered as scVI's
    assert ArmedImage._default_min_epochs == 0  # image models: steps only


def test_tl_armed_runs_are_kept_apart_by_key_added(sim):
    first = ab.tl.armed(sim, batch_key="batch", max_epochs=2, **FAST)
    fe_first = sim.obsm["X_armed_fe"].copy()
    ab.tl.armed(sim, batch_key="batch", key_added="armed_small", n_latent=4, max_epochs=2, **FAST)
    # The second run leaves the first in place.
    np.testing.assert_array_equal(sim.obsm["X_armed_fe"], fe_first)
    assert sim.obsm["X_armed_small_fe"].shape == (sim.n_obs, 4)
    assert "X_armed_small_re" in sim.obsm
    record = sim.uns["armed_small"]
    assert record["obsm_keys"] == {"fe": "X_armed_small_fe", "re": "X_armed_small_re"}
    assert record["call"]["n_latent"] == 4
    assert record["call"]["batch_key"] == "batch"
    assert record["params"]["n_latent"] == 4
    assert sim.uns["armed"]["obsm_keys"] == {"fe": "X_armed_fe", "re": "X_armed_re"}
    assert sim.uns["armed"]["params"] == first.run_record()["params"]
    with pytest.raises(ValueError, match="key_added must be a non-empty string"):
        ab.tl.armed(sim, batch_key="batch", key_added="", max_epochs=1)
