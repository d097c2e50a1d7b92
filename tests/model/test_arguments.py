"""Model arguments: relayed to the module, checked, renamed ones still accepted, recorded."""

from __future__ import annotations

import pytest
from conftest import FAST, assert_unchanged, snapshot

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedImageClassifier, ArmedRNA


def test_module_arguments_reach_the_module_and_the_record(sim):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    model = ArmedRNA(sim, n_latent=4, fe_reconstruction_weight=0.5, seed=0)
    assert model.module.n_latent == 4
    assert model.module.fe_reconstruction_weight == 0.5
    model.train(max_epochs=1, **FAST)
    params = model.run_record()["params"]
    assert params["n_latent"] == 4
    assert params["fe_reconstruction_weight"] == 0.5
    assert params["mode"] == "mixed"


def test_renamed_arguments_warn_and_still_work(sim, crops):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    with pytest.warns(FutureWarning, match=r"n_latent_fe=\.\.\.\) is deprecated; use n_latent="):
        model = ArmedRNA(sim, n_latent_fe=3)
    assert model.module.n_latent == 3
    adata = crops.copy()
    ArmedImageClassifier.setup_anndata(adata, batch_key="batch", labels_key="phenotype")
    with pytest.warns(
        FutureWarning, match=r"prior_sd=\.\.\.\) is deprecated; use hidden_prior_sd="
    ):
        clf = ArmedImageClassifier(adata, channels=(8,), n_latent=4, prior_sd=0.5)
    assert clf.module.label_head.slopes.prior_sd == 0.5


def test_predict_kind_is_a_deprecated_name_of_head(trained):
    with pytest.warns(FutureWarning, match="use head="):
        old = trained.predict(kind="me")
    assert (old == trained.predict(head="me")).all()


def test_unknown_and_data_derived_arguments_are_rejected(sim):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    with pytest.raises(TypeError, match=r"unknown arguments \['n_latnet'\].*'n_latent'"):
        ArmedRNA(sim, n_latnet=4)
    with pytest.raises(TypeError, match=r"\['n_batch'\] are set from the registered AnnData"):
        ArmedRNA(sim, n_batch=7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fe_reconstruction_effects": "hidden"}, "fe_reconstruction_effects must be 'none' or"),
        ({"adversary_clusters": 1}, "adversary_clusters must be 0 or at least 2"),
        ({"latent_kl_weight": -0.5}, "latent_kl_weight must be non-negative"),
    ],
)
def test_v2_arguments_are_checked_and_leave_the_anndata_alone(sim, kwargs, match):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    before = snapshot(sim)
    with pytest.raises(ValueError, match=match):
        ArmedRNA(sim, seed=0, **kwargs)
    assert_unchanged(sim, before)


# Each numeric argument with a bad value, and the start of the message it must give.
MODEL_ARGUMENTS = [
    ({"n_latent": -3}, "ArmedVAEModule: n_latent must be a positive integer, got -3"),
    ({"n_latent_re": 0}, "n_latent_re must be a positive integer"),
    ({"n_hidden": 2.5}, "n_hidden must be a positive integer, got 2.5"),
    ({"n_layers": True}, "n_layers must be a positive integer, got True"),
    ({"dropout_rate": 1.5}, r"dropout_rate must be a number in \[0, 1\), got 1.5"),
    ({"adversary_weight": -1.0}, "adversary_weight must be 'auto' or a number >= 0"),
    ({"adversary_scale": float("nan")}, "adversary_scale must be non-negative"),
    ({"fe_reconstruction_weight": -0.1}, "fe_reconstruction_weight must be non-negative"),
    ({"re_batch_weight": float("inf")}, "re_batch_weight must be non-negative"),
    ({"hidden_prior_sd": 0.0}, "hidden_prior_sd must be a finite number > 0"),
    ({"output_prior_sd": -1.0}, "output_prior_sd must be a finite number > 0"),
    ({"classification_weight": -2}, "classification_weight must be non-negative"),
    ({"adversary_clusters": -1}, "adversary_clusters must be 0 or at least 2"),
    ({"adversary_hidden": 0}, "adversary_hidden must be None or a positive integer, got 0"),
    ({"adversary_layers": 1.5}, "adversary_layers must be a positive integer, got 1.5"),
]


@pytest.mark.parametrize(("kwargs", "match"), MODEL_ARGUMENTS)
def test_every_numeric_model_argument_is_checked_at_the_door(sim, kwargs, match):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    before = snapshot(sim)
    with pytest.raises(ValueError, match=match):
        ArmedRNA(sim, **kwargs)
    assert_unchanged(sim, before)


TRAIN_ARGUMENTS = [
    ({"max_epochs": 0}, "ArmedRNA.train: max_epochs must be a positive integer, got 0"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 64.0}, "batch_size must be a positive integer, got 64.0"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    ({"train_size": 0.0}, r"train_size must be None or a number in \(0, 1\]"),
    ({"validation_size": 1.0}, r"validation_size must be None or a number in \[0, 1\)"),
    ({"train_size": 0.8, "validation_size": 0.5}, "train_size \\+ validation_size must be at"),
    ({"plan_kwargs": {"lr": 0}}, "plan_kwargs: lr must be a finite number > 0, got 0"),
    ({"plan_kwargs": {"adversary_lr": float("nan")}}, "adversary_lr must be a finite number"),
    ({"plan_kwargs": {"adversary_lr_end": 0}}, "adversary_lr_end must be None or a finite"),
    ({"plan_kwargs": {"random_effects_lr": -1e-3}}, "random_effects_lr must be a finite"),
    ({"plan_kwargs": {"warmup_fraction": 2}}, r"warmup_fraction must be a number in \[0, 1\]"),
    ({"plan_kwargs": {"n_steps_kl_warmup": -5}}, "n_steps_kl_warmup must be None or an integer"),
    ({"plan_kwargs": {"weight_decay": -1}}, "weight_decay must be non-negative"),
    ({"checkpoint_every_n_epochs": 0}, "checkpoint_every_n_epochs must be a positive integer"),
]


@pytest.mark.parametrize(("kwargs", "match"), TRAIN_ARGUMENTS)
def test_every_numeric_train_argument_is_checked_before_any_work(sim, tmp_path, kwargs, match):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    model = ArmedRNA(sim)
    before = snapshot(sim)
    with pytest.raises(ValueError, match=match):
        model.train(checkpoint_dir=tmp_path / "ck", **{"max_epochs": 1, **kwargs}, **FAST)
    assert not model.is_trained_
    assert not (tmp_path / "ck").exists()  # nothing was started
    assert_unchanged(sim, before)


def test_unknown_plan_arguments_and_bad_inference_batch_sizes_are_named(trained):
    with pytest.raises(TypeError, match=r"plan_kwargs \['learning_rate'\] are not arguments"):
        trained.train(max_epochs=1, plan_kwargs={"learning_rate": 1e-3}, **FAST)
    with pytest.raises(ValueError, match="ArmedRNA: batch_size must be a positive integer"):
        trained.get_latent_representation(batch_size=0)


def test_image_model_arguments_are_checked(crops):
    adata = crops.copy()
    ArmedImageClassifier.setup_anndata(adata, batch_key="batch", labels_key="phenotype")
    with pytest.raises(ValueError, match=r"channels must be a non-empty tuple of positive"):
        ArmedImageClassifier(adata, channels=(8, 0))
    with pytest.raises(ValueError, match="ArmedCNNModule: n_latent must be a positive integer"):
        ArmedImageClassifier(adata, n_latent=-1)
    ArmedImage.setup_anndata(adata, batch_key="batch")
    before = snapshot(adata)
    for bad in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="ArmedImageModule: decoder_width must be a finite"):
            ArmedImage(adata, decoder_width=bad)
    assert_unchanged(adata, before)


def test_adapt_and_tl_armed_check_their_numbers_first(trained, sim):
    with pytest.raises(ValueError, match=r"ArmedRNA.adapt: lr must be a finite number > 0"):
        trained.adapt(trained.adata, lr=-1.0)
    before = snapshot(sim)
    with pytest.raises(ValueError, match="armed: n_latent must be a positive integer, got -1"):
        ab.tl.armed(sim, batch_key="batch", n_latent=-1)
    with pytest.raises(ValueError, match="armed: max_epochs must be a positive integer"):
        ab.tl.armed(sim, batch_key="batch", max_epochs=-2)
    assert_unchanged(sim, before)  # setup_anndata was never reached


@pytest.mark.parametrize("axis", ["var", "obs"])
def test_repeated_gene_or_cell_names_are_refused(sim, axis):
    names = list(getattr(sim, f"{axis}_names"))
    names[1] = names[0]
    setattr(sim, f"{axis}_names", names)
    before = snapshot(sim)
    what = "gene" if axis == "var" else "cell"
    with pytest.raises(
        ValueError,
        match=rf"{axis}_names has 1 repeated {what} names .*"
        rf"{axis}_names_make_unique\(\)",
    ):
        ArmedRNA.setup_anndata(sim, batch_key="batch")
    assert_unchanged(sim, before)


def test_a_query_with_repeated_genes_is_refused(trained):
    query = trained.adata.copy()
    names = list(query.var_names)
    names[2] = names[3]
    query.var_names = names
    with pytest.raises(ValueError, match="repeated gene names"):
        trained.get_latent_representation(query)
