"""The adversary makes z_FE batch-invariant; the RE latent carries the batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FAST
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import armed_bio as ab
from armed_bio.model import ArmedRNA
from armed_bio.module import ArmedVAEModule


def knn_batch_accuracy(latent: np.ndarray, batches) -> float:
    """5-fold accuracy of a 15-NN classifier predicting the batch (local batch mixing)."""
    clf = KNeighborsClassifier(n_neighbors=15)
    return float(cross_val_score(clf, latent, np.asarray(batches), cv=5).mean())


def linear_batch_accuracy(latent: np.ndarray, batches) -> float:
    clf = LogisticRegression(max_iter=2000)
    return float(cross_val_score(clf, latent, np.asarray(batches), cv=5).mean())


def _train(**kwargs):
    adata = ab.datasets.simulate_counts(
        n_cells=800, n_genes=100, n_batches=3, n_cell_types=3, batch_effect_sd=1.0, seed=1
    )
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=0, **kwargs)
    model.train(max_epochs=200, seed=0, **FAST)  # 1,200 steps
    return adata, model


@pytest.mark.slow
def test_default_adversary_reduces_batch_structure():
    """Same architecture with and without the adversary (lambda_g = 0)."""
    adata, armed = _train()
    _, no_adversary = _train(adversary_weight=0.0)
    batches, types = adata.obs["batch"], adata.obs["cell_type"]
    z, z0 = armed.get_latent_representation(), no_adversary.get_latent_representation()
    assert silhouette_score(z, batches) < silhouette_score(z0, batches) - 0.05
    assert silhouette_score(z, types) > silhouette_score(z0, types)
    assert knn_batch_accuracy(armed.get_latent_representation(kind="re"), batches) > 0.95


@pytest.mark.slow
def test_strong_setting_removes_batch_versus_random_mode():
    """Confusion objective + detached FE reconstruction against scMEDAL-RE (mode="random").

    On the 0.2.0 defaults. With v2's (cluster-conditional adversary, centred effects,
    lambda_F 0.1) this simulation of huge, uniform batch effects keeps more batch in z_FE
    (15-NN batch accuracy 0.86, 0.82 with a global adversary): k-means of z_FE splits by
    batch, and the cluster-conditional adversary then takes each cluster's batch mix as given.
    """
    adata, mixed = _train(
        adversary_objective="confusion",
        detach_fe_reconstruction=True,
        **ArmedVAEModule.defaults_before_0_3,
    )
    _, random = _train(mode="random")
    batches, types = adata.obs["batch"], adata.obs["cell_type"]
    z_mixed, z_random = mixed.get_latent_representation(), random.get_latent_representation()
    # Without the adversary the latent encodes the batch perfectly ...
    assert knn_batch_accuracy(z_random, batches) > 0.95
    # ... with it, neighbourhoods mix batches and batch clusters vanish,
    assert knn_batch_accuracy(z_mixed, batches) < 0.75
    assert linear_batch_accuracy(z_mixed, batches) < linear_batch_accuracy(z_random, batches) - 0.1
    assert silhouette_score(z_mixed, batches) < min(0.05, silhouette_score(z_random, batches))
    # while cell types stay apart,
    assert silhouette_score(z_mixed, types) > silhouette_score(z_random, types)
    # and the RE latent of the same model carries the batch.
    assert knn_batch_accuracy(mixed.get_latent_representation(kind="re"), batches) > 0.95


def test_label_conditional_adversary_in_rna(tmp_path):
    """With labels the adversary sees z_FE and the label; its prior is p(batch | label)."""
    adata = ab.datasets.simulate_counts(
        n_cells=300, n_genes=60, n_batches=3, n_cell_types=3, seed=2
    )
    # type_2 only in batch_0: the label alone tells the batch for those cells.
    adata = adata[
        ~((adata.obs["cell_type"] == "type_2") & (adata.obs["batch"] != "batch_0")).to_numpy()
    ].copy()
    ArmedRNA.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = ArmedRNA(adata, seed=0)
    module = model.module
    assert module.conditional_adversary
    table = pd.crosstab(adata.obs["cell_type"], adata.obs["batch"], normalize="index")
    np.testing.assert_allclose(module.batch_given_label.numpy(), table.to_numpy(), atol=1e-6)
    assert module.batch_given_label[2].tolist() == [1.0, 0.0, 0.0]
    assert module.adversary.net[0].in_features == 10 + 3  # z_FE + one-hot label
    model.train(max_epochs=2, seed=0, **FAST)
    assert np.isfinite(model.history["adversary_ce_train"].to_numpy(dtype=float)).all()
    model.save(tmp_path / "m")
    loaded = ArmedRNA.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.module.batch_given_label.numpy(), table.to_numpy(), atol=1e-6)

    # Not told the label, the adversary is conditioned on clusters of z_FE (the default) ...
    clustered = ArmedRNA(adata, seed=0, conditional_adversary=False).module
    assert not clustered.conditional_adversary
    assert clustered.adversary.net[0].in_features == 10 + 5
    # ... or on nothing at all.
    unconditional = ArmedRNA(
        adata, seed=0, conditional_adversary=False, adversary_clusters=0
    ).module
    assert unconditional.adversary.net[0].in_features == 10
    assert module.n_adversary_clusters == 0  # told the label, no clusters are kept
    ArmedRNA.setup_anndata(adata, batch_key="batch")  # no labels: nothing to condition on
    assert not ArmedRNA(adata, seed=0).module.conditional_adversary


def test_cluster_conditional_adversary_tracks_clusters_and_saves_them(tmp_path):
    """Without labels, adversary_clusters conditions the adversary on k-means clusters of z_FE."""
    adata = ab.datasets.simulate_counts(n_cells=300, n_genes=60, n_batches=3, seed=2)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=0, adversary_clusters=4, adversary_objective="confusion")
    module = model.module
    assert module.n_adversary_clusters == 4
    assert module.adversary.net[0].in_features == 10 + 4  # z_FE + one-hot cluster
    assert not bool(module.clusters_started)
    model.train(max_epochs=3, seed=0, **FAST)
    assert bool(module.clusters_started)
    assert np.isfinite(model.history["adversary_ce_train"].to_numpy(dtype=float)).all()
    mix = module.batch_given_cluster.numpy()
    np.testing.assert_allclose(mix.sum(1), 1.0, atol=1e-5)
    # Each cell's cluster is its nearest centre in z_FE.
    z = model.get_latent_representation(kind="fe")
    import torch

    design = module.design_matrix(torch.as_tensor(adata.obs["batch"].cat.codes.to_numpy()))
    clusters = module.clusters_of(torch.as_tensor(z), design).numpy()
    nearest = ((z[:, None, :] - module.cluster_centres.numpy()[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(clusters, nearest)
    assert not hasattr(module, "batch_latent_means")  # raw z_FE unless centred
    model.save(tmp_path / "m")
    loaded = ArmedRNA.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(loaded.module.cluster_centres.numpy(), module.cluster_centres)
    np.testing.assert_array_equal(loaded.module.batch_given_cluster.numpy(), mix)
    with pytest.raises(ValueError, match="adversary_clusters must be 0 or at least 2"):
        ArmedRNA(adata, seed=0, adversary_clusters=1)


def test_centred_clusters_live_in_batch_centred_latent(tmp_path):
    """centre_adversary_clusters: clusters of z_FE less its batch's running mean."""
    import torch

    adata = ab.datasets.simulate_counts(
        n_cells=300, n_genes=60, n_batches=3, batch_effect_sd=1.0, seed=2
    )
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    model = ArmedRNA(adata, seed=0, adversary_clusters=4, centre_adversary_clusters=True)
    module = model.module
    assert module.batch_latent_means.shape == (3, 10)
    model.train(max_epochs=20, seed=0, **FAST)
    z = model.get_latent_representation(kind="fe")
    codes = adata.obs["batch"].cat.codes.to_numpy()
    means = module.batch_latent_means.numpy()
    # The running means follow each batch's cells (an average over recent minibatches):
    # each is nearest its own batch's mean latent.
    batch_means = np.stack([z[codes == b].mean(0) for b in range(3)])
    distances = ((means[:, None, :] - batch_means[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(1), [0, 1, 2])
    centred = z - means[codes]
    nearest = ((centred[:, None, :] - module.cluster_centres.numpy()[None]) ** 2).sum(-1).argmin(1)
    design = module.design_matrix(torch.as_tensor(codes))
    np.testing.assert_array_equal(module.clusters_of(torch.as_tensor(z), design), nearest)
    model.save(tmp_path / "m")
    loaded = ArmedRNA.load(tmp_path / "m", adata=adata).module
    np.testing.assert_array_equal(loaded.batch_latent_means.numpy(), means)


def test_variational_latent_pays_kl_and_reports_its_mean():
    """latent_kl_weight > 0: z_FE sampled in training, its KL in the loss, latents are means."""
    adata = ab.datasets.simulate_counts(n_cells=300, n_genes=60, n_batches=3, seed=2)
    ArmedRNA.setup_anndata(adata, batch_key="batch")
    deterministic = ArmedRNA(adata, seed=0).module
    assert deterministic.encoder.log_var is None
    model = ArmedRNA(adata, seed=0, latent_kl_weight=0.5)
    assert model.module.encoder.log_var is not None
    model.train(max_epochs=3, seed=0, **FAST)
    kl = model.history["kl_local_train"].to_numpy(dtype=float)
    assert np.isfinite(kl).all()
    assert (kl > 0).all()
    # Eval mode: the posterior mean, the same on every call.
    np.testing.assert_array_equal(
        model.get_latent_representation(), model.get_latent_representation()
    )
    with pytest.raises(ValueError, match="latent_kl_weight must be non-negative"):
        ArmedRNA(adata, seed=0, latent_kl_weight=-1.0)


def test_latent_kl_matches_torch():
    import torch
    from torch.distributions import Normal, kl_divergence

    from armed_bio.module._base import latent_kl

    torch.manual_seed(0)
    mean, log_var = torch.randn(7, 4), torch.randn(7, 4)
    expected = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(latent_kl(mean, log_var), expected)
