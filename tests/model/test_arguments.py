"""Model arguments: relayed to the module, checked, renamed ones still accepted, recorded."""

from __future__ import annotations

import pytest
from conftest import FAST, assert_unchanged, snapshot

from armed_bio.model import ArmedImageClassifier, ArmedRNA


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
