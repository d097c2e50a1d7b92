"""Bad input: a clear error naming the problem and the fix, and the AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import armed_bio as ab
from armed_bio.model import ArmedRNA


def _with_x(adata, fn):
    x = adata.X.toarray()
    fn(x)
    adata.X = x
    return adata


def _one_batch(adata):
    adata.obs["batch"] = "b0"
    return adata


CASES = {
    "missing batch_key": (lambda a: a, {"batch_key": None}, ValueError, "batch_key` is required"),
    "unknown batch_key": (lambda a: a, {"batch_key": "plate"}, KeyError, "not a column"),
    "single batch": (_one_batch, {}, ValueError, "at least 2"),
    "unknown layer": (lambda a: a, {"layer": "counts"}, KeyError, "not in adata.layers"),
    "unknown labels_key": (lambda a: a, {"labels_key": "celltype"}, KeyError, "labels_key"),
    "NaN values": (
        lambda a: _with_x(a, lambda x: x.__setitem__((0, 0), np.nan)),
        {},
        ValueError,
        "NaN",
    ),
    "inf values": (
        lambda a: _with_x(a, lambda x: x.__setitem__((1, 2), np.inf)),
        {},
        ValueError,
        "infinite",
    ),
    "empty cell": (
        lambda a: _with_x(a, lambda x: x.__setitem__(3, 0)),
        {},
        ValueError,
        "filter_cells",
    ),
    "empty gene": (
        lambda a: _with_x(a, lambda x: x.__setitem__((slice(None), 5), 0)),
        {},
        ValueError,
        "filter_genes",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_setup_rejects_bad_input_and_leaves_adata_unchanged(sim, case):
    mutate, kwargs, error, message = CASES[case]
    adata = mutate(sim)
    before = snapshot(adata)
    args = {"batch_key": "batch", **kwargs}
    with pytest.raises(error, match=message):
        ArmedRNA.setup_anndata(adata, **args)
    assert_unchanged(adata, before)
    # The one-liner goes through the same checks.
    with pytest.raises(error, match=message):
        ab.tl.armed(adata, **args, max_epochs=1)
    assert_unchanged(adata, before)


def test_missing_batch_values(sim):
    sim.obs["batch"] = sim.obs["batch"].astype(object)
    sim.obs.iloc[0, sim.obs.columns.get_loc("batch")] = np.nan
    before = snapshot(sim)
    with pytest.raises(ValueError, match="missing values"):
        ArmedRNA.setup_anndata(sim, batch_key="batch")
    assert_unchanged(sim, before)


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda x: x * 0.5, "non-integer"), (lambda x: x - 1.0, "negative")],
)
def test_count_likelihood_needs_integer_counts(sim, change, message):
    sim.layers["transformed"] = change(sim.X.toarray())
    before = snapshot(sim)
    with pytest.raises(ValueError, match=message):
        ab.tl.armed(sim, batch_key="batch", layer="transformed")
    assert_unchanged(sim, before)
    ArmedRNA.setup_anndata(sim, batch_key="batch", layer="transformed")
    before = snapshot(sim)
    with pytest.raises(ValueError, match=message) as err:
        ArmedRNA(sim, likelihood="nb")
    assert "likelihood='gaussian'" in str(err.value)
    assert_unchanged(sim, before)
    # The Gaussian likelihood accepts log-normalised / scaled values.
    ArmedRNA(sim, likelihood="gaussian")


@pytest.mark.parametrize("bad", [None, "not anndata", np.zeros((3, 3))])
def test_non_anndata_is_rejected(bad):
    with pytest.raises(TypeError, match="must be an anndata.AnnData"):
        ArmedRNA.setup_anndata(bad, batch_key="batch")
    with pytest.raises(TypeError, match="must be an anndata.AnnData"):
        ab.tl.armed(bad, batch_key="batch")


def test_empty_anndata_is_rejected(sim):
    with pytest.raises(ValueError, match="empty"):
        ArmedRNA.setup_anndata(sim[:0].copy(), batch_key="batch")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "both"}, "mode must be"),
        ({"likelihood": "normal"}, "likelihood must be"),
        ({"adversary_on": "layers"}, "adversary_on"),
        ({"adversary_weight": "big"}, "adversary_weight"),
        ({"adversary_objective": "gan"}, "adversary_objective"),
    ],
)
def test_bad_model_arguments(sim, kwargs, message):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    with pytest.raises(ValueError, match=message):
        ArmedRNA(sim, **kwargs)


def test_bad_max_epochs(sim):
    ArmedRNA.setup_anndata(sim, batch_key="batch")
    with pytest.raises(ValueError, match="max_epochs"):
        ArmedRNA(sim).train(max_epochs=0)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dense"])
def test_empty_gene_and_cell_checks_scan_blocks_without_copies(sim, fmt, monkeypatch):
    from armed_bio import _validation

    # Blocks smaller than one cell's stored values: every block boundary case is crossed.
    monkeypatch.setattr(_validation, "SCAN_BLOCK", 7)
    x = sparse.csr_matrix(sim.X, copy=True)
    x[:, 5] = 0  # stored zeros in CSR: an empty gene all the same
    matrix = x.toarray() if fmt == "dense" else x.asformat(fmt)
    with pytest.raises(ValueError, match="1 empty genes"):
        _validation.check_matrix(matrix, "adata.X")
    dense = x.toarray()
    dense[:, 5] = 1
    dense[[4, 9], :] = 0
    matrix = dense if fmt == "dense" else sparse.csr_matrix(dense).asformat(fmt)
    with pytest.raises(ValueError, match="2 empty cells"):
        _validation.check_matrix(matrix, "adata.X")
