"""Semi-synthetic batches: binomial thinning of real counts with known effects."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot

import armed_bio as ab


@pytest.fixture
def source():
    adata = ab.datasets.simulate_counts(n_cells=400, n_genes=50, n_batches=1, seed=3)
    adata.obs = adata.obs.drop(columns="batch")
    return adata


def test_thinning_keeps_truth_and_only_removes_counts(source):
    before = snapshot(source)
    out = ab.datasets.thin_into_batches(source, n_batches=4, effect_sd=0.7, seed=1)
    assert_unchanged(source, before)
    truth = out.layers["truth"].toarray()
    thinned = out.X.toarray()
    np.testing.assert_array_equal(truth, source.X.toarray())
    assert (thinned <= truth).all()
    assert (thinned >= 0).all()
    assert np.array_equal(thinned, np.round(thinned))
    assert list(out.obs["batch"].cat.categories) == [f"batch_{k}" for k in range(4)]
    effect = out.varm["true_batch_effect"]
    assert effect.shape == (50, 4)
    np.testing.assert_allclose(effect.mean(1), 0.0, atol=1e-12)  # centred over batches
    # The thinning follows the known factors: per batch, kept fraction ~ depth * exp(e - max).
    depth = out.uns["semi_synthetic"]["depth"]
    for k, name in enumerate(out.obs["batch"].cat.categories):
        cells = (out.obs["batch"] == name).to_numpy()
        kept = thinned[cells].sum(0) / np.maximum(truth[cells].sum(0), 1)
        expected = depth[name] * np.exp(effect[:, k] - effect.max(1))
        enough = truth[cells].sum(0) > 200
        assert np.corrcoef(kept[enough], expected[enough])[0, 1] > 0.9


def test_thinning_skews_the_cell_type_mix_and_is_seeded(source):
    a = ab.datasets.thin_into_batches(source, n_batches=3, mix_concentration=0.5, seed=0)
    b = ab.datasets.thin_into_batches(source, n_batches=3, mix_concentration=0.5, seed=0)
    c = ab.datasets.thin_into_batches(source, n_batches=3, mix_concentration=0.5, seed=1)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    assert not np.array_equal(a.X.toarray(), c.X.toarray())
    mix = np.asarray(
        a.obs.groupby(["cell_type", "batch"], observed=False).size().unstack(), dtype=float
    )
    mix /= mix.sum(1, keepdims=True)
    assert np.abs(mix - 1 / 3).max() > 0.15  # not the same mix everywhere


def test_existing_batch_column_is_kept_as_source_batch():
    adata = ab.datasets.simulate_counts(n_cells=200, n_genes=30, n_batches=2, seed=0)
    out = ab.datasets.thin_into_batches(adata, n_batches=3, seed=0)
    assert (out.obs["source_batch"] == adata.obs["batch"]).all()
    assert out.obs["batch"].nunique() <= 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_batches": 1}, "n_batches must be at least 2"),
        ({"effect_sd": -1.0}, "effect_sd must be non-negative"),
        ({"depth_range": (0.0, 1.0)}, "depth_range must satisfy"),
        ({"depth_range": (0.5, 1.5)}, "depth_range must satisfy"),
        ({"label_key": "nope"}, "label_key 'nope' is not a column"),
    ],
)
def test_bad_arguments_are_named(source, kwargs, match):
    with pytest.raises((ValueError, KeyError), match=match):
        ab.datasets.thin_into_batches(source, **kwargs)


def test_non_count_input_is_refused_with_the_fix(source):
    source.layers["log"] = np.log1p(source.X.toarray())
    before = snapshot(source)
    with pytest.raises(ValueError, match="must hold raw counts.*layer="):
        ab.datasets.thin_into_batches(source, layer="log")
    assert_unchanged(source, before)
