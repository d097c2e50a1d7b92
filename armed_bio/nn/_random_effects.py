"""Bayesian random-effects layers: the batch-specific part of an ARMED network.

A random effect is a parameter vector ``u_k`` per batch ``k`` (batch, donor, plate) with a
Gaussian variational posterior ``q(u_k) = N(mu_k, sigma_k^2)`` and a zero-mean Gaussian prior
``p(u_k) = N(0, s^2)``. A layer receives a design matrix ``Z`` (one-hot, soft probabilities,
or all zeros) and returns ``Z @ U``: one-hot selects a batch, soft ``Z`` mixes batches and
``Z = 0`` switches the random effect off (fixed effects only).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# softplus^-1 of the initial posterior s.d., kept small relative to the prior so that training
# starts near the fixed-effects solution (the reference code reversed this range).
_INIT_SD_FRACTION = 0.1


def _inverse_softplus(x: float) -> float:
    return math.log(math.expm1(x))


class RandomEffect(nn.Module):
    """Per-batch Gaussian random effect of dimension ``n_features``.

    Parameters
    ----------
    n_batch
        Number of batches (rows of ``U``).
    n_features
        Size of each batch's effect vector.
    prior_sd
        Standard deviation ``s`` of the zero-mean Gaussian prior; the amount of shrinkage.
    centred
        Identify the effects: subtract their mean over the ``n_batch`` batches the layer is
        built with (the batches seen in training) before use. The effects then sum to zero
        over those batches, so ``Z = 0`` is the average batch by construction, not wherever
        the prior's shrinkage leaves it. Batches added later (:meth:`add_batches`) are
        measured from the same centre.
    """

    def __init__(
        self, n_batch: int, n_features: int, prior_sd: float = 0.25, centred: bool = False
    ):
        super().__init__()
        if prior_sd <= 0:
            raise ValueError(f"prior_sd must be positive, got {prior_sd}.")
        self.n_batch = n_batch
        self.n_features = n_features
        self.prior_sd = float(prior_sd)
        # Rows whose mean is the centre (0: not centred); fixed when batches are added.
        self.n_centred = n_batch if centred else 0
        self.loc = nn.Parameter(torch.zeros(n_batch, n_features))
        init = _inverse_softplus(_INIT_SD_FRACTION * prior_sd)
        self.raw_scale = nn.Parameter(torch.full((n_batch, n_features), init))

    @property
    def scale(self) -> torch.Tensor:
        """Posterior standard deviations, shape ``(n_batch, n_features)``."""
        return F.softplus(self.raw_scale) + 1e-6

    def _centre(self, u: torch.Tensor) -> torch.Tensor:
        return u - u[: self.n_centred].mean(0) if self.n_centred else u

    @property
    def mean(self) -> torch.Tensor:
        """Posterior means of the effects as applied (centred when the layer is), per batch."""
        return self._centre(self.loc)

    def sample(self) -> torch.Tensor:
        """One reparameterised draw of ``U`` in training, the posterior mean in eval mode.

        Centred when the layer is.
        """
        if self.training:
            return self._centre(self.loc + self.scale * torch.randn_like(self.loc))
        return self.mean

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return ``Z @ U`` for a design matrix ``z`` of shape ``(batch, n_batch)``."""
        return z @ self.sample()

    @torch.no_grad()
    def add_batches(self, init_loc: torch.Tensor) -> None:
        """Append batches whose effects start at ``init_loc`` (``(n_new, n_features)``).

        ``init_loc`` is the effect as applied (:attr:`mean`; for a centred layer, measured from
        the seen batches' centre). Their posterior s.d. starts at the usual small value. Used
        to give new batches their own random effects (:meth:`armed_bio.model.ArmedRNA.adapt`).
        """
        init_loc = init_loc.to(self.loc)
        if self.n_centred:
            init_loc = init_loc + self.loc[: self.n_centred].mean(0).detach()
        raw = torch.full_like(init_loc, _inverse_softplus(_INIT_SD_FRACTION * self.prior_sd))
        self.loc = nn.Parameter(torch.cat([self.loc.detach(), init_loc]))
        self.raw_scale = nn.Parameter(torch.cat([self.raw_scale.detach(), raw]))
        self.n_batch = self.loc.shape[0]

    def kl_divergence(self) -> torch.Tensor:
        """Analytic ``KL(q(U) || p(U))`` summed over batches and features (a scalar)."""
        scale = self.scale
        ratio = (scale / self.prior_sd) ** 2
        mean_term = (self.loc / self.prior_sd) ** 2
        return 0.5 * (ratio + mean_term - 1.0 - torch.log(ratio)).sum()


class FiLM(nn.Module):
    """Random feature-wise scale and shift: ``(1 + gamma(Z)) * h + beta(Z)``.

    Applied after a normalisation layer, so that each batch can rescale and shift every
    hidden unit, as in the random-effects encoder and decoder of ARMED/scMEDAL.
    """

    def __init__(
        self, n_batch: int, n_features: int, prior_sd: float = 0.25, centred: bool = False
    ):
        super().__init__()
        self.gamma = RandomEffect(n_batch, n_features, prior_sd, centred)
        self.beta = RandomEffect(n_batch, n_features, prior_sd, centred)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Modulate ``h`` of shape ``(batch, features)`` or ``(batch, channels, H, W)``."""
        gamma, beta = self.gamma(z), self.beta(z)
        if h.dim() > 2:  # conv feature maps: one scale and shift per channel
            shape = (*gamma.shape, *([1] * (h.dim() - 2)))
            gamma, beta = gamma.view(shape), beta.view(shape)
        return (1.0 + gamma) * h + beta

    def kl_divergence(self) -> torch.Tensor:
        return self.gamma.kl_divergence() + self.beta.kl_divergence()
