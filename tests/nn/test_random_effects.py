"""The random-effects layer: closed-form KL, soft/zero Z, posterior mean at inference."""

import torch
from torch.distributions import Normal, kl_divergence

from armed_bio.nn import FiLM, MixedEffectsClassifier, RandomEffect


def _layer(seed=0):
    torch.manual_seed(seed)
    layer = RandomEffect(n_batch=4, n_features=6, prior_sd=0.3)
    with torch.no_grad():
        layer.loc.normal_(0, 0.5)
        layer.raw_scale.normal_(-1, 0.5)
    return layer


def test_kl_matches_closed_form():
    layer = _layer()
    expected = kl_divergence(Normal(layer.loc, layer.scale), Normal(0.0, 0.3)).sum()
    torch.testing.assert_close(layer.kl_divergence(), expected)


def test_kl_is_zero_at_the_prior():
    layer = RandomEffect(3, 5, prior_sd=0.7)
    with torch.no_grad():
        layer.loc.zero_()
        # softplus(raw) + 1e-6 == prior_sd
        layer.raw_scale.fill_(torch.log(torch.expm1(torch.tensor(0.7 - 1e-6))).item())
    assert layer.kl_divergence().abs().item() < 1e-5


def test_eval_uses_posterior_mean_and_training_samples():
    layer = _layer().eval()
    z = torch.eye(4)
    torch.testing.assert_close(layer(z), layer.loc)
    torch.testing.assert_close(layer(z), layer(z))
    layer.train()
    assert not torch.allclose(layer(z), layer(z))


def test_soft_z_mixes_clusters_and_zero_z_switches_off():
    layer = _layer().eval()
    soft = torch.tensor([[0.3, 0.7, 0.0, 0.0]])
    torch.testing.assert_close(layer(soft)[0], 0.3 * layer.loc[0] + 0.7 * layer.loc[1])
    zero = torch.zeros(2, 4)
    assert torch.count_nonzero(layer(zero)) == 0
    assert torch.count_nonzero(layer.train()(zero)) == 0


def test_film_is_identity_with_zero_z():
    torch.manual_seed(0)
    film = FiLM(3, 8)
    with torch.no_grad():
        for p in film.parameters():
            p.normal_()
    h = torch.randn(5, 8)
    torch.testing.assert_close(film(h, torch.zeros(5, 3)), h)
    assert not torch.allclose(film(h, torch.eye(3)[[0, 1, 2, 0, 1]]), h)


def test_gradients_reach_posterior_mean_and_scale():
    # ARMED's reference ME-CNN never updated its random-effect weights: ours must train.
    layer = _layer().train()
    out = layer(torch.eye(4)).pow(2).sum() + layer.kl_divergence()
    out.backward()
    assert layer.loc.grad.abs().sum() > 0
    assert layer.raw_scale.grad.abs().sum() > 0


def test_add_batches_keeps_old_rows_and_starts_new_ones_where_asked():
    layer = _layer()
    with torch.no_grad():
        layer.loc.normal_()
    old_loc, old_scale = layer.loc.detach().clone(), layer.scale.detach().clone()
    init = torch.tensor([[0.5, 0.5, 0.0, 0.0]]) @ old_loc
    layer.add_batches(init)
    assert layer.n_batch == 5
    assert layer.loc.shape == (5, layer.n_features)
    torch.testing.assert_close(layer.loc[:4].detach(), old_loc)
    torch.testing.assert_close(layer.scale[:4].detach(), old_scale)
    torch.testing.assert_close(layer.loc[4].detach(), 0.5 * (old_loc[0] + old_loc[1]))
    assert layer.loc.requires_grad


def test_mixed_effects_classifier_equals_fe_head_with_zero_z():
    torch.manual_seed(0)
    head = MixedEffectsClassifier(n_latent=6, n_labels=3, n_batch=4).eval()
    with torch.no_grad():
        for layer in (head.slopes, head.intercept):
            layer.loc.normal_()
    z = torch.randn(5, 6)
    fe, me = head(z, torch.zeros(5, 4))
    torch.testing.assert_close(fe, me)
    fe, me = head(z, torch.eye(4)[[0, 1, 2, 3, 0]])
    assert not torch.allclose(fe, me)
    fe_only = MixedEffectsClassifier(n_latent=6, n_labels=3, n_batch=0)
    assert fe_only.kl_divergence() == 0
    a, b = fe_only(z, None)
    assert a is b


def test_centred_effects_sum_to_zero_over_seen_batches():
    torch.manual_seed(0)
    layer = RandomEffect(n_batch=4, n_features=6, prior_sd=0.3, centred=True)
    with torch.no_grad():
        layer.loc.normal_(1.0, 0.5)  # far from centred on purpose
    applied = layer.eval()(torch.eye(4))
    torch.testing.assert_close(applied, layer.loc - layer.loc.mean(0))
    torch.testing.assert_close(applied.sum(0), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.mean, applied)
    # Training draws are centred too; Z = 0 stays off.
    draws = layer.train()(torch.eye(4))
    torch.testing.assert_close(draws.sum(0), torch.zeros(6), atol=1e-5, rtol=0)
    assert torch.count_nonzero(layer(torch.zeros(2, 4))) == 0


def test_centred_layer_keeps_its_centre_when_batches_are_added():
    torch.manual_seed(0)
    layer = RandomEffect(n_batch=3, n_features=5, centred=True).eval()
    with torch.no_grad():
        layer.loc.normal_(2.0, 1.0)
    seen = layer(torch.eye(3)).clone()
    start = 0.5 * seen[0] + 0.5 * seen[1]
    layer.add_batches(start[None])
    grown = layer(torch.eye(4))
    torch.testing.assert_close(grown[:3], seen)  # the seen batches' effects do not move
    torch.testing.assert_close(grown[3], start)  # the new batch starts where it was asked to
    assert layer.n_centred == 3
