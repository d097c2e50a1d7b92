"""Property-based tests (hypothesis) of the random-effects layer and the mixed-effects decodes.

The identities every ARMED output relies on, checked over random sizes, weights and designs:
shapes; a one-hot ``Z`` selects its batch's effect, a soft ``Z`` mixes them linearly and
``Z = 0`` switches them off; centred effects sum to zero; the ``Z = 0`` decode is the
fixed-effects path; adding batches leaves every old batch's effects and decodes unchanged.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from armed_bio.module import ArmedVAEModule
from armed_bio.nn import MixedEffectsDecoder, RandomEffect

PROPERTIES = settings(max_examples=40, deadline=None, derandomize=True, database=None)
TOL = {"atol": 1e-5, "rtol": 1e-5}

sizes = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**16)


def _layer(n_batch: int, n_features: int, centred: bool, seed: int) -> RandomEffect:
    torch.manual_seed(seed)
    layer = RandomEffect(n_batch, n_features, prior_sd=0.5, centred=centred)
    with torch.no_grad():
        layer.loc.normal_()
        layer.raw_scale.normal_()
    return layer.eval()


def _simplex(n_cells: int, n_batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n_cells, n_batch, generator=generator) * 3, dim=-1)


@PROPERTIES
@given(n_batch=sizes, n_features=sizes, n_cells=sizes, centred=st.booleans(), seed=seeds)
def test_one_hot_selects_soft_mixes_and_zero_switches_off(
    n_batch, n_features, n_cells, centred, seed
):
    layer = _layer(n_batch, n_features, centred, seed)
    soft = _simplex(n_cells, n_batch, seed + 1)
    out = layer(soft)
    assert out.shape == (n_cells, n_features)
    torch.testing.assert_close(out, soft @ layer.mean, **TOL)  # Z @ U, row by row
    one_hot = torch.eye(n_batch)
    torch.testing.assert_close(layer(one_hot), layer.mean, **TOL)
    assert torch.equal(layer(torch.zeros(n_cells, n_batch)), torch.zeros(n_cells, n_features))
    if centred:
        torch.testing.assert_close(layer.mean.sum(0), torch.zeros(n_features), atol=1e-5, rtol=0)


@PROPERTIES
@given(n_batch=sizes, n_features=sizes, n_new=sizes, centred=st.booleans(), seed=seeds)
def test_added_batches_leave_old_rows_and_start_where_asked(
    n_batch, n_features, n_new, centred, seed
):
    layer = _layer(n_batch, n_features, centred, seed)
    before = layer.mean.clone()
    init = torch.randn(n_new, n_features, generator=torch.Generator().manual_seed(seed))
    layer.add_batches(init)
    assert layer.n_batch == n_batch + n_new
    torch.testing.assert_close(layer.mean[:n_batch], before, **TOL)
    torch.testing.assert_close(layer.mean[n_batch:], init, **TOL)


@PROPERTIES
@given(n_batch=sizes, n_features=sizes, seed=seeds)
def test_the_kl_is_non_negative_and_zero_at_the_prior(n_batch, n_features, seed):
    layer = _layer(n_batch, n_features, False, seed)
    assert float(layer.kl_divergence().detach()) >= 0
    with torch.no_grad():
        layer.loc.zero_()
        layer.raw_scale.fill_(float(torch.log(torch.expm1(torch.tensor(0.5 - 1e-6)))))
    assert abs(float(layer.kl_divergence().detach())) < 1e-4


def _decoder(n_batch: int, n_out: int, n_layers: int, centred: bool, seed: int):
    torch.manual_seed(seed)
    decoder = MixedEffectsDecoder(3, n_out, n_batch, n_hidden=8, n_layers=n_layers, centred=centred)
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, RandomEffect):
                module.loc.normal_(std=0.5)
    return decoder.eval()


@PROPERTIES
@given(
    n_batch=sizes,
    n_out=sizes,
    n_layers=st.integers(1, 2),
    n_cells=sizes,
    centred=st.booleans(),
    seed=seeds,
)
def test_decodes_z_zero_is_the_fixed_path_and_output_effects_mix(
    n_batch, n_out, n_layers, n_cells, centred, seed
):
    decoder = _decoder(n_batch, n_out, n_layers, centred, seed)
    z = torch.randn(n_cells, 3, generator=torch.Generator().manual_seed(seed))
    fixed, _ = decoder(z, None)
    zero, _ = decoder(z, torch.zeros(n_cells, n_batch))
    assert fixed.shape == (n_cells, n_out)
    torch.testing.assert_close(zero, fixed, **TOL)
    # The per-output effects are affine in Z: a soft Z's output is the mixture of batches'.
    soft = _simplex(n_cells, n_batch, seed + 2)
    mixed = decoder.output_effects(fixed, soft)
    per_batch = torch.stack(
        [decoder.output_effects(fixed, torch.eye(n_batch)[[k] * n_cells]) for k in range(n_batch)],
        dim=-1,
    )
    torch.testing.assert_close(mixed, (per_batch * soft[:, None, :]).sum(-1), **TOL)


@PROPERTIES
@given(n_batch=st.integers(2, 4), n_new=st.integers(1, 3), seed=seeds)
def test_adapting_new_batches_leaves_old_batches_decodes_unchanged(n_batch, n_new, seed):
    torch.manual_seed(seed)
    module = ArmedVAEModule(n_input=7, n_batch=n_batch, n_latent=3, n_hidden=8).eval()
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, RandomEffect):
                layer.loc.normal_(std=0.5)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed))
    designs = [torch.eye(n_batch)[[k] * 5] for k in range(n_batch)]
    before = [module.decode(z, d) for d in designs] + [module.decode(z, None)]
    module.add_batches(_simplex(n_new, n_batch, seed))
    after = [module.decode(z, torch.cat([d, torch.zeros(5, n_new)], 1)) for d in designs]
    after.append(module.decode(z, None))
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new, old, **TOL)
