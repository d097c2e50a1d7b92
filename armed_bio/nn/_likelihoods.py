"""Count log-likelihoods split into a mean-free part and a mean part.

The ARMED loss evaluates the same counts under two decodes (mixed effects and ``Z = 0``).
The terms of the negative binomial that do not involve the mean, ``lgamma(x + theta) -
lgamma(theta) - lgamma(x + 1)``, are shared by both decodes and vanish where ``x = 0``, so they
are computed once, on the non-zero entries only. On sparse scRNA counts this removes most of
the ``lgamma``/``digamma`` work that dominates a dense NB evaluation.
"""

from __future__ import annotations

import torch


def _nonzero(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, cols = (x > 0).nonzero(as_tuple=True)
    return rows, cols, x[rows, cols]


def nb_count_terms(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-cell sum of ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``.

    ``x`` is ``(cells, genes)``, ``theta`` the per-gene inverse dispersion ``(genes,)``.
    """
    rows, cols, xv = _nonzero(x)
    th = theta[cols]
    vals = torch.lgamma(xv + th) - torch.lgamma(th) - torch.lgamma(xv + 1.0)
    return torch.zeros(x.shape[0], dtype=vals.dtype, device=x.device).index_add(0, rows, vals)


def nb_mean_terms(
    x: torch.Tensor, log_mu: torch.Tensor, theta: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    """Per-cell sum of ``theta log theta + x log mu - (x + theta) log(theta + mu)``."""
    log_theta_mu = torch.log(theta + log_mu.exp())
    return (theta * (log_theta - log_theta_mu) + x * (log_mu - log_theta_mu)).sum(-1)


def log_factorial(x: torch.Tensor) -> torch.Tensor:
    """Per-cell sum of ``lgamma(x + 1)`` (zero entries contribute nothing)."""
    rows, _, xv = _nonzero(x)
    vals = torch.lgamma(xv + 1.0)
    return torch.zeros(x.shape[0], dtype=vals.dtype, device=x.device).index_add(0, rows, vals)


def poisson_mean_terms(x: torch.Tensor, log_mu: torch.Tensor) -> torch.Tensor:
    """Per-cell sum of ``x log mu - mu``."""
    return (x * log_mu - log_mu.exp()).sum(-1)
