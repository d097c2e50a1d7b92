"""Encoders, decoders and classifier heads of the ARMED autoencoder."""

from __future__ import annotations

import torch
from torch import nn

from ._random_effects import FiLM, RandomEffect


def _dense_block(n_in: int, n_out: int, dropout_rate: float) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "linear": nn.Linear(n_in, n_out),
            # LayerNorm, not BatchNorm: the decoder runs twice per step (mixed and Z = 0), and
            # counterfactual decodes must not depend on the composition of a minibatch.
            "norm": nn.LayerNorm(n_out),
            "dropout": nn.Dropout(dropout_rate),
        }
    )


class FixedEffectsEncoder(nn.Module):
    """Encoder ``x -> z_FE`` that also returns its hidden activations.

    Deterministic, or with ``variational`` a Gaussian ``q(z_FE | x)`` whose mean is what
    :meth:`forward` returns and whose log-variance :meth:`log_variance` gives.

    Parameters
    ----------
    n_input
        Number of input features (genes).
    n_latent
        Size of the fixed-effects latent.
    n_hidden
        Width of each hidden layer.
    n_layers
        Number of hidden layers.
    dropout_rate
        Dropout after each hidden layer.
    variational
        Also learn a per-cell posterior variance of ``z_FE``.
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        variational: bool = False,
    ):
        super().__init__()
        dims = [n_input] + [n_hidden] * n_layers
        self.blocks = nn.ModuleList(
            [_dense_block(a, b, dropout_rate) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.out = nn.Linear(dims[-1], n_latent)
        self.log_var = nn.Linear(dims[-1], n_latent) if variational else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The mean of ``z_FE`` and every hidden layer's activations."""
        hidden = []
        h = x
        for block in self.blocks:
            h = torch.relu(block["norm"](block["linear"](h)))
            hidden.append(h)
            h = block["dropout"](h)
        return self.out(h), hidden

    def log_variance(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Posterior log-variance of ``z_FE`` from :meth:`forward`'s hidden activations."""
        # Bounded: a collapsing or exploding variance would make the KL term non-finite.
        return self.log_var(hidden[-1]).clamp(-12.0, 8.0)


class RandomEffectsEncoder(nn.Module):
    """Encoder ``(h, Z) -> z_RE`` whose hidden layers carry FiLM random effects.

    It reads the first hidden layer of the fixed-effects encoder (the expensive genes x hidden
    product is computed once) and modulates every hidden layer per batch.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int,
        n_latent: int = 5,
        n_hidden: int = 64,
        n_layers: int = 1,
        prior_sd: float = 0.25,
    ):
        super().__init__()
        dims = [n_input] + [n_hidden] * n_layers
        self.linears = nn.ModuleList(
            [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(b, elementwise_affine=False) for b in dims[1:]])
        self.films = nn.ModuleList([FiLM(n_batch, b, prior_sd) for b in dims[1:]])
        self.out = nn.Linear(dims[-1], n_latent)

    def forward(self, h: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        for linear, norm, film in zip(self.linears, self.norms, self.films, strict=True):
            h = torch.relu(film(norm(linear(h)), design))
        return self.out(h)

    def kl_divergence(self) -> torch.Tensor:
        return sum(film.kl_divergence() for film in self.films)


class MixedEffectsDecoder(nn.Module):
    """Decoder ``(z_FE, Z) -> per-gene output`` with FiLM random effects and a random output.

    Hidden layers: ``relu((1 + gamma(Z)) * norm(W h) + beta(Z))``. Output: per-gene linear
    predictor ``eta`` with a random per-gene scale and offset, ``eta * (1 + s(Z)) + o(Z)``.
    ``Z = 0`` gives the fixed-effects (batch-free) output; with ``centred`` random effects it
    is the average seen batch. With ``n_batch = 0`` the decoder has no random effects at all
    (scMEDAL-FE).
    """

    def __init__(
        self,
        n_latent: int,
        n_output: int,
        n_batch: int,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        hidden_prior_sd: float = 0.25,
        output_prior_sd: float = 1.0,
        zero_inflation: bool = False,
        centred: bool = False,
    ):
        super().__init__()
        self.has_random_effects = n_batch > 0
        dims = [n_latent] + [n_hidden] * n_layers
        self.blocks = nn.ModuleList(
            [_dense_block(a, b, dropout_rate) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.out = nn.Linear(dims[-1], n_output)
        self.dropout_logits = nn.Linear(dims[-1], n_output) if zero_inflation else None
        if self.has_random_effects:
            self.films = nn.ModuleList(
                [FiLM(n_batch, b, hidden_prior_sd, centred) for b in dims[1:]]
            )
            self.output_scale = RandomEffect(n_batch, n_output, output_prior_sd, centred)
            self.output_offset = RandomEffect(n_batch, n_output, output_prior_sd, centred)

    def forward(
        self, z: torch.Tensor, design: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the linear predictor ``eta`` and, with zero inflation, dropout logits.

        ``design=None`` skips the random effects entirely (same result as ``Z = 0``, cheaper).
        """
        use_re = self.has_random_effects and design is not None
        h = z
        for i, block in enumerate(self.blocks):
            h = block["norm"](block["linear"](h))
            if use_re:
                h = self.films[i](h, design)
            h = block["dropout"](torch.relu(h))
        eta = self.out(h)
        if use_re:
            eta = self.output_effects(eta, design)
        dropout = self.dropout_logits(h) if self.dropout_logits is not None else None
        return eta, dropout

    def output_effects(self, eta: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """The per-output random scale and offset of ``design`` applied to ``eta``."""
        return eta * (1.0 + self.output_scale(design)) + self.output_offset(design)

    def kl_divergence(self) -> torch.Tensor:
        if not self.has_random_effects:
            return torch.zeros((), device=self.out.weight.device)
        kl = self.output_scale.kl_divergence() + self.output_offset.kl_divergence()
        return kl + sum(film.kl_divergence() for film in self.films)


class Classifier(nn.Module):
    """Small MLP classifier returning logits (adversary, batch head, label head)."""

    def __init__(self, n_input: int, n_classes: int, n_hidden: int = 64, n_layers: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        d = n_input
        for _ in range(n_layers):
            layers += [nn.Linear(d, n_hidden), nn.ReLU()]
            d = n_hidden
        layers.append(nn.Linear(d, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class MixedEffectsClassifier(nn.Module):
    """Label head with a fixed-effects logit and a mixed-effects logit (ARMED's ME classifier).

    ``h = relu(W1 z_FE)``; FE logit ``W2 h + b``; ME logit
    ``W2 (h * (1 + u_1(Z))) + b + u_0(Z)``: random slopes on the features before the output
    layer and a random intercept on the logit. ``Z = 0`` makes the two logits equal. With
    ``n_batch = 0`` there is only the FE logit.
    """

    def __init__(
        self,
        n_latent: int,
        n_labels: int,
        n_batch: int,
        n_hidden: int = 64,
        prior_sd: float = 0.25,
        centred: bool = False,
    ):
        super().__init__()
        self.hidden = nn.Linear(n_latent, n_hidden)
        self.out = nn.Linear(n_hidden, n_labels)
        self.has_random_effects = n_batch > 0
        if self.has_random_effects:
            self.slopes = RandomEffect(n_batch, n_hidden, prior_sd, centred)
            self.intercept = RandomEffect(n_batch, n_labels, prior_sd, centred)

    def forward(
        self, z: torch.Tensor, design: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(fe_logits, me_logits)``; ``me_logits`` equals ``fe_logits`` without RE."""
        h = torch.relu(self.hidden(z))
        fe = self.out(h)
        if not self.has_random_effects or design is None:
            return fe, fe
        me = self.out(h * (1.0 + self.slopes(design))) + self.intercept(design)
        return fe, me

    def kl_divergence(self) -> torch.Tensor:
        if not self.has_random_effects:
            return torch.zeros((), device=self.out.weight.device)
        return self.slopes.kl_divergence() + self.intercept.kl_divergence()
