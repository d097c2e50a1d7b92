"""A replicate-level test of log fold changes: donors (samples) as random effects.

Cell-level tests treat every cell as an independent replicate, so across few donors they call
every gene whose change differs between donors (pseudoreplication). Here each replicate (donor)
contributes one log fold change with its sampling variance, and the genes' changes are combined
by a random-effects meta-analysis: the between-replicate variance ``tau^2``
(DerSimonian-Laird) widens the uncertainty of a change that is not consistent across
replicates, and the Hartung-Knapp-Sidik-Jonkman t-test over replicates keeps the error rate
near its nominal level with as few as 3-6 donors. Changes are tested against a minimal size
(TREAT) rather than against exactly zero.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def replicate_lfc(
    sums1: np.ndarray,
    squares1: np.ndarray,
    n1: np.ndarray,
    sums2: np.ndarray,
    squares2: np.ndarray,
    n2: np.ndarray,
    pseudocount: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-replicate log2 fold changes of mean expression and their sampling variances.

    ``sums*``/``squares*`` are ``(n_replicates, n_genes)`` sums and sums of squares of the
    cells' expression, ``n*`` the cells per replicate and group. The variance of
    ``log2(mean + c)`` is the delta method's ``var(x) / (n (mean + c)^2 ln(2)^2)``.
    """
    n1, n2 = n1[:, None].astype(float), n2[:, None].astype(float)
    m1, m2 = sums1 / n1, sums2 / n2
    v1 = np.maximum(squares1 / n1 - m1**2, 0.0) * n1 / np.maximum(n1 - 1, 1)
    v2 = np.maximum(squares2 / n2 - m2**2, 0.0) * n2 / np.maximum(n2 - 1, 1)
    lfc = np.log2(m1 + pseudocount) - np.log2(m2 + pseudocount)
    var = (v1 / (n1 * (m1 + pseudocount) ** 2) + v2 / (n2 * (m2 + pseudocount) ** 2)) / np.log(
        2
    ) ** 2
    return lfc, np.maximum(var, 1e-12)


def random_effects_test(lfc: np.ndarray, var: np.ndarray, delta: float) -> dict[str, np.ndarray]:
    """Combine ``(n_replicates, n_genes)`` changes into one test per gene.

    Returns the pooled change ``lfc_mean``, its standard error ``lfc_std``, the
    between-replicate s.d. ``tau``, the HKSJ t statistic (``k - 1`` degrees of freedom), the
    ``pvalue`` of the interval null ``|change| <= delta`` (TREAT, McCarthy & Smyth 2009: a
    change must exceed ``delta`` to be called, so the small compositional shifts every gene
    takes when others change are not; ``delta = 0`` is the usual point null), and
    ``proba_de``: the probability that ``|change| > delta`` under the t distribution of the
    pooled change.
    """
    k = lfc.shape[0]
    if k < 2:
        raise ValueError(f"A replicate-level test needs at least 2 replicates, got {k}.")
    w = 1.0 / var
    fixed = (w * lfc).sum(0) / w.sum(0)
    q = (w * (lfc - fixed) ** 2).sum(0)
    c = w.sum(0) - (w**2).sum(0) / w.sum(0)
    tau2 = np.maximum(0.0, (q - (k - 1)) / np.maximum(c, 1e-300))
    ws = 1.0 / (var + tau2)
    pooled = (ws * lfc).sum(0) / ws.sum(0)
    # HKSJ: the spread of the replicates' changes around the pooled one sets the scale. Not
    # floored at the model-based variance: the floor ("modified" HKSJ) made the test far too
    # conservative here (under the null 0-0.2 % of p-values below 0.05 against 3-9 % without
    # it), because the decoded expression's cell-to-cell variance overstates the noise of a
    # replicate's log fold change.
    spread = (ws * (lfc - pooled) ** 2).sum(0) / (k - 1)
    se = np.sqrt(np.maximum(spread, 1e-300) / ws.sum(0))
    t = pooled / se
    df = k - 1
    return {
        "lfc_mean": pooled,
        "lfc_std": se,
        "tau": np.sqrt(tau2),
        "t": t,
        "pvalue": np.minimum(
            1.0,
            stats.t.sf((np.abs(pooled) - delta) / se, df)
            + stats.t.sf((np.abs(pooled) + delta) / se, df),
        ),
        "proba_de": stats.t.cdf((-delta - pooled) / se, df) + stats.t.sf((delta - pooled) / se, df),
    }


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out
