"""Differential expression for ArmedRNA: on batch-free expression, with donors as replicates.

Two tests, one table (scvi-tools' column names):

- cell level (default): scvi-tools' own ``change`` mode (:class:`scvi.model.base.
  DifferentialComputation`: log fold changes between pairs of cells, ``proba_de`` of
  ``|LFC| > delta``, Bayes factors, posterior-FDR calls), run on the cells' batch-free
  (``Z = 0``) expression instead of scVI's batch-corrected scale;
- replicate level (``replicate_key=...``, the "condition within donors" design): one log fold
  change per donor (or sample), combined by a random-effects meta-analysis
  (:mod:`._replicate_test`), so the uncertainty is the variation between donors and a gene
  that changes in one donor only is not called.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scvi.model.base import DifferentialComputation
from scvi.utils import track

from .. import _validation as check
from .._arguments import check_arguments
from ._query import check_query_matrix
from ._replicate_test import benjamini_hochberg, random_effects_test, replicate_lfc

logger = logging.getLogger(__name__)

REST = "rest"
_CP10K = 1e4


def _groups(
    adata: AnnData, groupby: str | None, group1, group2, min_cells: int
) -> tuple[pd.Series, list, Any]:
    """The group column (as strings), the groups to test, and the reference; all checked."""
    if groupby is None:
        raise ValueError(
            "groupby is required: the adata.obs column whose groups to compare, e.g. "
            "groupby='cell_type'."
        )
    if groupby not in adata.obs.columns:
        raise KeyError(
            f"groupby {groupby!r} is not a column of adata.obs. Available columns: "
            f"{list(adata.obs.columns)}."
        )
    column = adata.obs[groupby]
    if column.isna().any():
        raise ValueError(
            f"adata.obs[{groupby!r}] has {int(column.isna().sum())} missing values; fill them "
            "or subset to the annotated cells."
        )
    column = column.astype(str)
    present = list(pd.unique(column))
    categories = (
        [str(c) for c in adata.obs[groupby].cat.categories if str(c) in present]
        if isinstance(adata.obs[groupby].dtype, pd.CategoricalDtype)
        else sorted(present)
    )
    if group1 is None:
        groups = categories
    else:
        groups = [str(g) for g in ([group1] if isinstance(group1, str) else group1)]
    for g in [*groups, *([] if group2 is None else [str(group2)])]:
        if g not in present:
            raise KeyError(f"group {g!r} is not in adata.obs[{groupby!r}] (groups: {categories}).")
    reference = None if group2 is None else str(group2)
    groups = [g for g in groups if g != reference]
    if not groups or (reference is None and len(present) < 2):
        raise ValueError(
            f"Nothing to compare: adata.obs[{groupby!r}] needs at least two groups, and "
            "group1 must differ from group2."
        )
    counts = column.value_counts()
    for g in [*groups, *([] if reference is None else [reference])]:
        if counts[g] < min_cells:
            raise ValueError(
                f"group {g!r} of adata.obs[{groupby!r}] has {counts[g]} cells; differential "
                f"expression needs at least min_cells={min_cells} per group. Merge small "
                "groups, or lower min_cells."
            )
        rest = len(column) - counts[g]
        if reference is None and rest < min_cells:
            raise ValueError(
                f"The rest of the cells (all but {g!r}) are {rest}, fewer than min_cells="
                f"{min_cells}. Compare against a named group2 instead."
            )
    return column, groups, reference


def _raw_properties(matrix, idx1: np.ndarray, idx2: np.ndarray) -> dict[str, np.ndarray]:
    """Raw means, non-zero fractions and library-normalised means of two groups (read only)."""
    out = {}
    library = np.asarray(matrix.sum(1)).ravel()
    for suffix, idx in (("1", idx1), ("2", idx2)):
        block = matrix[idx]
        out[f"raw_mean{suffix}"] = np.asarray(block.mean(0)).ravel()
        out[f"non_zeros_proportion{suffix}"] = np.asarray((block != 0).mean(0)).ravel()
        scale = (_CP10K / np.maximum(library[idx], 1.0))[:, None]
        normalised = block.multiply(scale) if sparse.issparse(block) else block * scale
        out[f"raw_normalized_mean{suffix}"] = np.asarray(normalised.mean(0)).ravel()
    return out


class DifferentialExpressionMixin:
    """``differential_expression`` for :class:`~armed_bio.model.ArmedRNA`."""

    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        *,
        batch=None,
        replicate_key: str | None = None,
        replicate_expression: Literal["own_batch", "batch_free"] = "own_batch",
        delta: float = 0.25,
        fdr_target: float = 0.05,
        min_cells: int = 10,
        min_cells_per_replicate: int = 3,
        n_samples_overall: int = 5000,
        pseudocount: float = 0.1,
        seed: int = 0,
        batch_size: int | None = None,
        key_added: str | None = None,
        silent: bool = False,
    ) -> pd.DataFrame:
        """Differential expression between groups of cells, on batch-free expression.

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the training AnnData. Only written to
            with ``key_added``.
        groupby
            ``adata.obs`` column of the groups (cell types, conditions, clusters).
        group1
            Group or groups to test; default: every group, each against the rest.
        group2
            Reference group; default: the rest of the cells (one-vs-rest).
        batch
            Expression compared: ``None`` (default) the batch-free (``Z = 0``) expression of
            every cell; a batch the model knows: every cell as if measured in that batch.
        replicate_key
            ``adata.obs`` column of replicates (donors, samples; often the model's batch
            key). Given, the test is at the replicate level: one log fold change per
            replicate holding at least ``min_cells_per_replicate`` cells of both groups,
            combined by a random-effects meta-analysis (between-replicate variance ``tau``,
            Hartung-Knapp t-test, ``pvalue`` and BH ``pvalue_adj``). Without it, scvi-tools'
            cell-level ``change`` mode.
        replicate_expression
            At the replicate level with ``batch=None``: ``"own_batch"`` (default) decodes each
            cell in its own batch. Every replicate must then lie within one batch (donors as
            the batch, or nested in it), so the batch is constant within each comparison and
            cancels from its log fold change, while a change specific to one donor stays
            visible. ``"batch_free"`` decodes with ``Z = 0``, which removes the batch from
            every cell but also averages donor-specific changes over the donors (measured in
            ``benchmarks/results/rna_differential_expression.md``).
        delta
            Smallest log2 fold change that counts as a change: ``proba_de`` is the probability
            of ``|LFC| > delta``, and the replicate-level ``pvalue`` tests the null
            ``|LFC| <= delta`` (TREAT; ``delta=0`` tests ``LFC = 0``).
        fdr_target
            Target FDR of the ``is_de_fdr_<fdr_target>`` calls: posterior expected FDR
            (cell level, as scvi-tools) or BH-adjusted p-values (replicate level).
        min_cells
            Fewest cells a group (and the rest) may have.
        min_cells_per_replicate
            Fewest cells of each group for a replicate to enter the replicate-level test.
        n_samples_overall
            Cells drawn per group (cell level).
        pseudocount
            Added to mean expression (counts per 10k) before the log (replicate level).
        seed
            Seed of the cell draws (cell level).
        batch_size
            Cells per decoding chunk.
        key_added
            Also write the results to ``adata.uns[key_added]`` in the layout of
            :func:`scanpy.tl.rank_genes_groups` (``scores`` = ``lfc_mean / lfc_std``), so
            scanpy's ``sc.pl.rank_genes_groups*`` and ``sc.get.rank_genes_groups_df`` work on
            them.
        silent
            No progress bar.

        Returns
        -------
        One row per gene and comparison: ``proba_de``, ``proba_not_de``, ``bayes_factor``,
        ``lfc_mean``/``lfc_median``/``lfc_std`` (log2), ``scale1``/``scale2`` (the groups'
        mean expression, as proportions), raw-count statistics (``raw_mean*``,
        ``non_zeros_proportion*``, ``raw_normalized_mean*``), ``is_de_fdr_<fdr_target>``,
        ``comparison``, ``group1``, ``group2``; at the replicate level also ``tau``,
        ``n_replicates``, ``pvalue`` and ``pvalue_adj``.
        """
        self._check_if_trained(warn=False)
        adata = self.adata if adata is None else check.check_anndata(adata)
        check_arguments(
            {
                "delta": delta,
                "min_cells": min_cells,
                "min_cells_per_replicate": min_cells_per_replicate,
                "n_samples_overall": n_samples_overall,
                "pseudocount": pseudocount,
                "seed": seed,
            },
            "differential_expression",
        )
        if not (isinstance(fdr_target, float) and 0 < fdr_target < 1):
            raise ValueError(f"fdr_target must be a number in (0, 1), got {fdr_target!r}.")
        if self.module.likelihood == "gaussian":
            raise ValueError(
                "differential_expression needs a count likelihood ('nb', 'zinb' or 'poisson'); "
                "this model was trained with likelihood='gaussian' on log-normalised data."
            )
        column, groups, reference = _groups(adata, groupby, group1, group2, min_cells)
        replicates = None
        if replicate_key is not None:
            if replicate_key not in adata.obs.columns:
                raise KeyError(
                    f"replicate_key {replicate_key!r} is not a column of adata.obs. Available "
                    f"columns: {list(adata.obs.columns)}."
                )
            if adata.obs[replicate_key].isna().any():
                raise ValueError(
                    f"adata.obs[{replicate_key!r}] has missing values; give every cell its "
                    "replicate (donor/sample)."
                )
            replicates = adata.obs[replicate_key].astype(str).to_numpy()
            if replicate_expression not in ("own_batch", "batch_free"):
                raise ValueError(
                    "replicate_expression must be 'own_batch' or 'batch_free', got "
                    f"{replicate_expression!r}."
                )
            if batch is None and replicate_expression == "own_batch":
                self._check_nested(adata, replicate_key)
        code = self._batch_code(batch)  # checks the batch (and that the model has one)
        if key_added is not None and not isinstance(key_added, str):
            raise TypeError(f"key_added must be a string, got {key_added!r}.")
        matrix = check_query_matrix(
            adata, self.registry_["setup_args"].get("layer"), self.module.likelihood
        )
        self._check_genes_for(adata)
        own = replicates is not None and batch is None and replicate_expression == "own_batch"
        what = (
            "each cell's own-batch"
            if own
            else ("batch-free (Z = 0)" if code is None else f"as batch {batch!r}")
        )
        logger.info(
            f"Differential expression on {what} expression: {len(groups)} comparison(s) by "
            f"{groupby!r}"
            + (f", {replicate_key!r} as replicates." if replicates is not None else ".")
        )
        labels = column.to_numpy()
        if replicates is None:
            tables = self._de_cells(
                adata,
                matrix,
                labels,
                groups,
                reference,
                batch,
                delta,
                fdr_target,
                n_samples_overall,
                seed,
                batch_size,
                silent,
            )
        else:
            tables = self._de_replicates(
                adata,
                matrix,
                labels,
                replicates,
                groups,
                reference,
                batch,
                own,
                delta,
                fdr_target,
                min_cells_per_replicate,
                pseudocount,
                batch_size,
                silent,
            )
        result = pd.concat(tables, axis=0)
        if key_added is not None:
            adata.uns[key_added] = rank_genes_groups_record(
                result, groupby, reference, fdr_target, replicate_key, what
            )
        return result

    # ------------------------------------------------------------------ helpers
    def _check_nested(self, adata: AnnData, replicate_key: str) -> None:
        """Raise unless every replicate's cells lie in one batch (for own-batch decoding)."""
        batch_key = self.registry_["setup_args"]["batch_key"]
        if batch_key not in adata.obs.columns:
            raise KeyError(
                f"replicate_expression='own_batch' decodes each cell in its batch, but "
                f"adata.obs has no batch column {batch_key!r}. Add it, or pass "
                "replicate_expression='batch_free'."
            )
        n_batches = adata.obs.groupby(replicate_key, observed=True)[batch_key].nunique()
        spread = n_batches[n_batches > 1]
        if len(spread):
            raise ValueError(
                f"replicate_expression='own_batch' needs each replicate within one batch, but "
                f"{len(spread)} values of adata.obs[{replicate_key!r}] span several batches of "
                f"{batch_key!r} (e.g. {list(spread.index[:3])}), so the batch would not cancel "
                "within a replicate. Pass replicate_expression='batch_free'."
            )

    def _check_genes_for(self, adata: AnnData) -> None:
        from ._query import check_genes

        check_genes(adata, self.adata.var_names)

    def _proportions(self, adata, cells: np.ndarray, batch, batch_size) -> np.ndarray:
        """Expected expression proportions (rows sum to 1) of ``cells``, in their order."""
        unique, inverse = np.unique(cells, return_inverse=True)
        values = self.get_counterfactual_expression(
            adata, batch=batch, indices=unique, library_size=1.0, batch_size=batch_size
        ).to_numpy()
        return values[inverse]

    def _de_cells(
        self,
        adata,
        matrix,
        labels,
        groups,
        reference,
        batch,
        delta,
        fdr_target,
        n_samples_overall,
        seed,
        batch_size,
        silent,
    ) -> list[pd.DataFrame]:
        """scvi-tools' ``change`` mode on batch-free expression, one comparison per group."""
        rng = np.random.default_rng(seed)

        def model_fn(_adata, indices, transform_batch, n_samples_overall):
            drawn = rng.choice(np.asarray(indices), size=n_samples_overall, replace=True)
            return self._proportions(adata, drawn, batch, batch_size)

        # scvi reads only these two from its data manager when pseudocounts are estimated
        # and batches are left as observed (use_observed_batches=True below).
        manager = SimpleNamespace(adata=adata, get_from_registry=lambda key: matrix)
        computation = DifferentialComputation(model_fn, None, manager)
        tables = []
        for g in track(groups, description="DE...", disable=silent or len(groups) < 2):
            idx1, idx2 = _pair(labels, g, reference)
            info = computation.get_bayes_factors(
                idx1,
                idx2,
                mode="change",
                use_observed_batches=True,
                n_samples_overall=n_samples_overall,
                delta=delta,
            )
            table = pd.DataFrame(
                {**info, **_raw_properties(matrix, idx1, idx2)}, index=self.adata.var_names
            )
            calls = _posterior_fdr_calls(table["proba_de"].to_numpy(), fdr_target)
            table[f"is_de_fdr_{fdr_target}"] = calls
            tables.append(_finish(table, g, reference, "proba_de", ascending=False))
        return tables

    def _replicate_sums(self, adata, labels, replicates, cells, batch, observed, batch_size):
        """Per (replicate, group) cell counts, sums and sums of squares of cp10k expression.

        ``observed=True``: each cell in its own batch (``batch`` unused).
        """
        where, keys = pd.MultiIndex.from_arrays([replicates[cells], labels[cells]]).factorize()
        n_genes = self.adata.n_vars
        sums = np.zeros((len(keys), n_genes))
        squares = np.zeros((len(keys), n_genes))
        counts = np.bincount(where, minlength=len(keys))
        start = 0
        chunks = self._stream_expression(
            adata, cells, None, _CP10K, batch_size, batch, observed=observed
        )
        for _, values in chunks:
            part = where[start : start + len(values)]
            start += len(values)
            values = values.astype(np.float64)
            # A (replicate, group) x cells indicator sums each chunk in one product.
            onehot = sparse.csr_matrix(
                (np.ones(len(part)), (part, np.arange(len(part)))), shape=(len(keys), len(part))
            )
            sums += onehot @ values
            squares += onehot @ values**2
        return keys, counts, sums, squares

    def _de_replicates(
        self,
        adata,
        matrix,
        labels,
        replicates,
        groups,
        reference,
        batch,
        observed,
        delta,
        fdr_target,
        min_per_replicate,
        pseudocount,
        batch_size,
        silent,
    ) -> list[pd.DataFrame]:
        """Replicate-level random-effects test, one comparison per group."""
        cells = np.arange(adata.n_obs)
        if reference is not None:
            cells = np.flatnonzero(np.isin(labels, [*groups, reference]))
        keys, counts, sums, squares = self._replicate_sums(
            adata, labels, replicates, cells, batch, observed, batch_size
        )
        key_rep = keys.get_level_values(0).to_numpy()
        key_group = keys.get_level_values(1).to_numpy()
        names = np.unique(key_rep)
        tables = []
        for g in track(groups, description="DE...", disable=silent or len(groups) < 2):
            one = [key_group == g] + [
                key_group != g if reference is None else key_group == reference
            ]
            per = []
            for mask in one:
                stack = [(key_rep == r) & mask for r in names]
                per.append(
                    (
                        np.array([sums[m].sum(0) for m in stack]),
                        np.array([squares[m].sum(0) for m in stack]),
                        np.array([counts[m].sum() for m in stack]),
                    )
                )
            (s1, q1, n1), (s2, q2, n2) = per
            keep = (n1 >= min_per_replicate) & (n2 >= min_per_replicate)
            if keep.sum() < 2:
                raise ValueError(
                    f"A replicate-level test of {g!r} needs at least 2 replicates with "
                    f"min_cells_per_replicate={min_per_replicate} cells of both groups; "
                    f"{int(keep.sum())} have them (cells per replicate: "
                    f"{dict(zip(names, n1.tolist(), strict=True))} vs "
                    f"{dict(zip(names, n2.tolist(), strict=True))}). Lower "
                    "min_cells_per_replicate, or test without replicate_key."
                )
            lfc, var = replicate_lfc(
                s1[keep], q1[keep], n1[keep], s2[keep], q2[keep], n2[keep], pseudocount
            )
            stats = random_effects_test(lfc, var, delta)
            idx1, idx2 = _pair(labels, g, reference)
            proba = stats["proba_de"]
            table = pd.DataFrame(
                {
                    "proba_de": proba,
                    "proba_not_de": 1.0 - proba,
                    "bayes_factor": np.log(proba + 1e-8) - np.log(1.0 - proba + 1e-8),
                    "scale1": (s1[keep] / n1[keep, None]).mean(0) / _CP10K,
                    "scale2": (s2[keep] / n2[keep, None]).mean(0) / _CP10K,
                    "pseudocounts": pseudocount / _CP10K,
                    "delta": delta,
                    "lfc_mean": stats["lfc_mean"],
                    "lfc_median": stats["lfc_mean"],
                    "lfc_std": stats["lfc_std"],
                    "lfc_min": lfc.min(0),
                    "lfc_max": lfc.max(0),
                    "tau": stats["tau"],
                    "n_replicates": int(keep.sum()),
                    "pvalue": stats["pvalue"],
                    "pvalue_adj": benjamini_hochberg(stats["pvalue"]),
                    **_raw_properties(matrix, idx1, idx2),
                },
                index=self.adata.var_names,
            )
            table[f"is_de_fdr_{fdr_target}"] = table["pvalue_adj"] < fdr_target
            tables.append(_finish(table, g, reference, "pvalue", ascending=True))
        return tables


def _pair(labels: np.ndarray, g, reference) -> tuple[np.ndarray, np.ndarray]:
    """Positions of group ``g`` and of its reference (the rest when ``reference`` is None)."""
    rest = labels != g if reference is None else labels == reference
    return np.flatnonzero(labels == g), np.flatnonzero(rest)


def _posterior_fdr_calls(proba_de: np.ndarray, fdr: float) -> np.ndarray:
    """scvi-tools' rule: the largest set of genes whose posterior expected FDR is <= fdr."""
    order = np.argsort(-proba_de)
    expected = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    calls = np.zeros(len(order), dtype=bool)
    calls[order[: int((expected <= fdr).sum())]] = True
    return calls


def _finish(table: pd.DataFrame, g, reference, sort_by: str, ascending: bool) -> pd.DataFrame:
    table = table.sort_values(sort_by, ascending=ascending, kind="stable")
    g2 = REST if reference is None else reference
    table["comparison"] = f"{g} vs {g2}"
    table["group1"] = g
    table["group2"] = g2
    return table


def rank_genes_groups_record(
    result: pd.DataFrame, groupby: str, reference, fdr_target: float, replicate_key, expression
) -> dict[str, Any]:
    """Results in the layout of ``adata.uns['rank_genes_groups']`` (scanpy).

    Per group, genes are ordered by ``scores = lfc_mean / lfc_std`` (up-regulated first);
    ``pvals`` are the replicate-level p-values, or ``1 - proba_de`` at the cell level (not a
    p-value; scanpy only displays it).
    """
    groups = list(dict.fromkeys(result["group1"]))
    columns = {k: [] for k in ("names", "scores", "pvals", "pvals_adj", "logfoldchanges")}
    for g in groups:
        part = result[result["group1"] == g]
        scores = (part["lfc_mean"] / part["lfc_std"].clip(lower=1e-12)).to_numpy()
        order = np.argsort(-scores, kind="stable")
        part = part.iloc[order]
        if "pvalue" in part:
            pvals, adjusted = part["pvalue"].to_numpy(), part["pvalue_adj"].to_numpy()
        else:
            pvals = adjusted = part["proba_not_de"].to_numpy()
        columns["names"].append(part.index.to_numpy(dtype=object))
        columns["scores"].append(scores[order].astype(np.float32))
        columns["pvals"].append(pvals.astype(np.float64))
        columns["pvals_adj"].append(adjusted.astype(np.float64))
        columns["logfoldchanges"].append(part["lfc_mean"].to_numpy().astype(np.float32))
    record: dict[str, Any] = {
        "params": {
            "groupby": groupby,
            "reference": REST if reference is None else str(reference),
            "method": "armed_replicates" if replicate_key is not None else "armed_change",
            "use_raw": False,
            "layer": "None",
            "corr_method": "benjamini-hochberg" if replicate_key is not None else "posterior",
            "expression": expression,
            "fdr_target": fdr_target,
        }
    }
    for key, parts in columns.items():
        dtype = [(str(g), parts[0].dtype if key != "names" else "O") for g in groups]
        record[key] = np.rec.fromarrays(parts, dtype=dtype)
    return record
