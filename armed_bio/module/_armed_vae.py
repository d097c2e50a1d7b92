"""The joint ARMED autoencoder for scRNA-seq as an scvi-tools module."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi.module.base import auto_move_data
from torch import nn
from torch.nn import functional as F

from .._arguments import NON_NEGATIVE, check_arguments
from .._constants import COUNT_LIKELIHOODS, LIKELIHOODS, MODES, NORMALISATION_TARGET
from ..nn import (
    Classifier,
    FixedEffectsEncoder,
    MixedEffectsClassifier,
    MixedEffectsDecoder,
    RandomEffectsEncoder,
)
from ..nn._likelihoods import log_factorial, nb_count_terms, nb_mean_terms, poisson_mean_terms
from ._base import ADVERSARY_HIDDEN, ArmedModuleBase, accuracy

# The mixed model's adversary width (since 0.13.0); the fixed model keeps ADVERSARY_HIDDEN.
MIXED_ADVERSARY_HIDDEN = 256


class ArmedVAEModule(ArmedModuleBase):
    """Fixed-effects encoder + adversary, random-effects encoder, mixed-effects decoder.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches seen in training (the random-effects grouping).
    mode
        ``"mixed"``: full ARMED. ``"fixed"``: adversarial fixed effects only (scMEDAL-FE).
        ``"random"``: no adversary and no FE-only reconstruction; the decoder and the RE encoder
        carry the random effects (scMEDAL-RE).
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` (raw counts, with library size) or ``"gaussian"``
        (mean squared error on log-normalised data).
    n_latent, n_latent_re
        Sizes of the fixed-effects (batch-invariant) latent ``z_FE`` and of the
        random-effects (batch-specific) latent ``z_RE``.
    n_hidden, n_layers, dropout_rate
        Encoder/decoder architecture.
    adversary_on
        ``"latent"`` (``z_FE`` only) or ``"all"`` (every encoder layer concatenated, the
        published configuration).
    adversary_weight
        ``lambda_g``: a number, or ``"auto"`` to scale it with a running mean of the per-cell
        reconstruction loss (times ``adversary_scale``), so that one setting works across
        sequencing depths.
    adversary_scale
        Ratio of ``lambda_g`` to the per-cell reconstruction loss when
        ``adversary_weight="auto"``. 0.0075 since 0.7.0 (0.01 before): with 75 epochs it
        keeps CellBench's cell lines apart on every seed and still removes Kang's donors.
    adversary_objective
        ``"negative_ce"`` (``-lambda_g * CE``, the paper's form) or ``"confusion"`` (push the
        adversary's prediction towards the batch prior; removes more batch and, where cell
        types are confounded with batch, more biology).
    fe_reconstruction_weight
        ``lambda_F``: weight of the FE-only (``Z = 0``) reconstruction in ``"mixed"`` mode.
        That term asks ``z_FE`` to reconstruct counts *with* their batch effects, against the
        adversary, so it trades batch correction for a better-trained batch-free decode (the
        published code weighs it 1.0; see ``benchmarks/results/rna_integration.md``).
    fe_reconstruction_effects
        What the FE-only reconstruction adds to the ``Z = 0`` decode before it is compared
        with the counts. ``"none"``: nothing (the first release). ``"output"``: the cell's
        batch's per-gene output scale and offset, but not the hidden FiLM effects. Then
        ``z_FE`` is no longer paid to carry per-gene batch effects, while one shared nonlinear
        decoder still anchors which cells align across batches.
    detach_fe_reconstruction
        Let the FE-only reconstruction train the decoder but not the encoder (removes very
        strong, uniform batch effects more completely; loses cell-type structure on real
        data).
    re_batch_weight
        Weight of the cooperative batch head on ``z_RE`` relative to the RE path's own
        reconstruction of the batch effect.
    hidden_prior_sd, output_prior_sd
        Prior s.d. of the hidden FiLM random effects and of the per-output random effects.
    n_labels
        Number of cell labels; ``> 0`` adds an FE label head on ``z_FE`` and a mixed-effects
        label head (random slopes and intercept per batch).
    classification_weight
        Weight of the label heads' cross-entropy.
    conditional_adversary
        With labels, the adversary is told each cell's label and must find the batch beyond
        it: ``z_FE`` is made independent of the batch *given* the label, so a cell type
        missing from some batches is not erased with the batch.
    adversary_clusters
        Without labels (or with ``conditional_adversary=False``), condition the adversary on
        this many online k-means clusters of ``z_FE`` instead (``0``: a global adversary): the
        unsupervised form of the label-conditional adversary, which removes the batch within
        neighbourhoods of the latent rather than the cell-type mix across it.
    centre_adversary_clusters
        Cluster ``z_FE`` less each batch's running mean. Where the batch shifts the whole
        latent, k-means of the raw latent splits by batch; an adversary told such a
        batch-pure cluster predicts the batch from the cluster alone and stops pushing the
        encoder to mix it. Centred, one cell type of every batch shares a cluster.
    centre_random_effects
        Make the decoder's and label head's random effects sum to zero over the seen batches,
        so that the batch-free (``Z = 0``) decode is the average batch by construction rather
        than something the FE-only reconstruction has to teach.
    adversary_hidden, adversary_layers
        Width and depth of the adversary's MLP. ``None``: 256 units in ``"mixed"`` mode
        (since 0.13.0; 64 before), 64 otherwise. A wider adversary finds more of the batch
        left within each cluster, so the encoder is pushed to remove it (with ``ArmedRNA``'s
        slower start of the adversary's learning rate, the scIB Totals of Kang and CellBench
        rise a little and the within-type batch probes fall); ``mode="fixed"`` lost with it
        (CellBench 0.773 against 0.781; ``benchmarks/results/rna_integration.md``). Two
        layers remove more still but leave k-means of ``z_FE`` in local minima on some seeds.
    latent_kl_weight
        Weight of ``KL(q(z_FE | x) || N(0, I))`` per cell (``0``: a deterministic ``z_FE``,
        the first release). A variational ``z_FE`` pays for every bit it keeps; the batch,
        which the decoder gets from ``Z`` for free, is the first thing it drops (scVI's
        mechanism, here next to the adversary). Latents and decodes use the posterior mean.
    """

    random_effect_modes = ("mixed", "random")
    defaults_before_0_3 = {
        "adversary_scale": 0.01,
        "fe_reconstruction_weight": 0.2,
        "adversary_clusters": 0,
        "centre_random_effects": False,
        "adversary_hidden": 64,
    }
    #: The 0.3-0.12 adversary: ``ArmedRNA(adata, **ArmedVAEModule.defaults_before_0_13)``
    #: builds the 0.12 (v4) model.
    defaults_before_0_13 = {"adversary_hidden": 64}
    #: Arguments added after 0.3 with the value that model files saved without them had.
    added_arguments = {"adversary_hidden": 64, "adversary_layers": 1}

    def __init__(
        self,
        n_input: int,
        n_batch: int,
        mode: str = "mixed",
        likelihood: str = "nb",
        n_latent: int = 10,
        n_latent_re: int = 5,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        adversary_on: str = "latent",
        adversary_weight: float | str = "auto",
        adversary_scale: float = 0.0075,
        adversary_objective: str = "negative_ce",
        fe_reconstruction_weight: float = 0.1,
        fe_reconstruction_effects: str = "none",
        detach_fe_reconstruction: bool = False,
        re_batch_weight: float = 1.0,
        hidden_prior_sd: float = 0.25,
        output_prior_sd: float = 1.0,
        n_labels: int = 0,
        classification_weight: float = 1.0,
        conditional_adversary: bool = True,
        adversary_clusters: int = 5,
        centre_adversary_clusters: bool = False,
        centre_random_effects: bool = True,
        latent_kl_weight: float = 0.0,
        adversary_hidden: int | None = None,
        adversary_layers: int = 1,
    ):
        check_arguments(locals(), type(self).__name__)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        if adversary_on not in ("latent", "all"):
            raise ValueError(f"adversary_on must be 'latent' or 'all', got {adversary_on!r}.")
        if fe_reconstruction_effects not in ("none", "output"):
            raise ValueError(
                "fe_reconstruction_effects must be 'none' or 'output', got "
                f"{fe_reconstruction_effects!r}."
            )
        if not (adversary_weight == "auto" or NON_NEGATIVE[1](adversary_weight)):
            raise ValueError(
                f"adversary_weight must be 'auto' or a number >= 0, got {adversary_weight!r}."
            )
        super().__init__(
            n_batch,
            mode,
            n_labels,
            conditional_adversary,
            adversary_objective,
            classification_weight,
        )
        self.n_input = n_input
        self.likelihood = likelihood
        self.n_latent = n_latent
        self.n_latent_re = n_latent_re
        self.adversary_on = adversary_on
        self.adversary_weight = adversary_weight
        self.adversary_scale = adversary_scale
        self.fe_reconstruction_weight = fe_reconstruction_weight
        self.fe_reconstruction_effects = fe_reconstruction_effects
        self.detach_fe_reconstruction = detach_fe_reconstruction
        self.re_batch_weight = re_batch_weight
        if latent_kl_weight < 0:
            raise ValueError(f"latent_kl_weight must be non-negative, got {latent_kl_weight}.")
        self.latent_kl_weight = float(latent_kl_weight)

        # Submodules are built in a fixed order: it sets which random draws initialise which.
        self.encoder = FixedEffectsEncoder(
            n_input, n_latent, n_hidden, n_layers, dropout_rate, variational=latent_kl_weight > 0
        )
        self.decoder = MixedEffectsDecoder(
            n_latent,
            n_input,
            n_batch=n_batch if self.has_random_effects else 0,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            hidden_prior_sd=hidden_prior_sd,
            output_prior_sd=output_prior_sd,
            zero_inflation=likelihood == "zinb",
            centred=centre_random_effects,
        )
        if likelihood in ("nb", "zinb"):
            self.log_theta = nn.Parameter(torch.zeros(n_input))
        self.centre_random_effects = centre_random_effects
        if self.has_adversary:
            if adversary_clusters and not self.conditional_adversary:
                self._add_adversary_clusters(
                    adversary_clusters, n_latent, centred=centre_adversary_clusters
                )
            if adversary_hidden is None:
                adversary_hidden = MIXED_ADVERSARY_HIDDEN if mode == "mixed" else ADVERSARY_HIDDEN
            self._add_adversary(
                n_latent + (n_hidden * n_layers if adversary_on == "all" else 0),
                adversary_hidden,
                adversary_layers,
            )
        if self.has_random_encoder:
            self.re_encoder = RandomEffectsEncoder(
                n_hidden, n_batch, n_latent_re, n_hidden=64, prior_sd=hidden_prior_sd
            )
            self.re_batch_head = nn.Linear(n_latent_re, n_batch)
            # z_RE reconstructs the batch effect the decoder applies to this cell.
            self.re_effect_decoder = nn.Linear(n_latent_re, n_input)
        if self.has_random_effects:
            self._add_z_predictor(Classifier(n_input, n_batch, n_hidden=32))
        if n_labels > 0:
            self.label_head = MixedEffectsClassifier(
                n_latent,
                n_labels,
                n_batch=n_batch if self.has_random_effects else 0,
                prior_sd=hidden_prior_sd,
                centred=centre_random_effects,
            )
        # Running mean of the per-cell reconstruction loss, for adversary_weight="auto".
        self.register_buffer("reconstruction_scale", torch.tensor(float("nan")))

    @property
    def has_adversary(self) -> bool:
        """Whether an adversary removes the batch from ``z_FE`` (modes mixed and fixed)."""
        return self.mode in ("mixed", "fixed")

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input (log-normalised counts) and library size."""
        if self.likelihood in COUNT_LIKELIHOODS:
            library = x.sum(-1, keepdim=True)
            return torch.log1p(x / library.clamp(min=1.0) * NORMALISATION_TARGET), library
        return x, torch.ones_like(x[..., :1])

    # ------------------------------------------------------------------ public interface
    def encode_re(self, x: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """``z_RE`` of raw counts ``x`` under ``design``."""
        hidden = self.encoder(self._normalise(x)[0])[1]
        return self.re_encoder(hidden[0], design)

    def decode(self, z: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        """Expression proportions (log-normalised values for ``"gaussian"``) of ``z_FE``.

        ``design=None`` gives the batch-free (``Z = 0``) expression.
        """
        eta, _ = self.decoder(z, design)
        return eta if self.likelihood == "gaussian" else torch.softmax(eta, dim=-1)

    # ------------------------------------------------------------------ inference
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None,
        design: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode ``x`` into ``z_FE`` (and ``z_RE`` when the mode has an RE encoder).

        ``design`` overrides the one-hot batch membership of ``batch_index`` (soft or zero
        ``Z`` for unseen batches). ``labels`` only pass through, for the label-conditional
        adversary.
        """
        x_in, library = self._normalise(x)
        z, hidden = self.encoder(x_in)
        extra = {}
        if self.latent_kl_weight > 0:
            log_var = self.encoder.log_variance(hidden)
            extra = {"qzm": z, "qzv": log_var.exp(), "qz_log_var": log_var}
            if self.training:  # one reparameterised draw; latents and decodes use the mean
                z = z + torch.exp(0.5 * log_var) * torch.randn_like(z)
        out = self._encoded(
            z, x_in, design, batch_index, labels, hidden=hidden, library=library, **extra
        )
        if self.has_random_encoder:
            # Detached: the RE path learns batch structure without pulling it into the FE trunk.
            out["z_re"] = self.re_encoder(hidden[0].detach(), out["design"])
        return out

    # ------------------------------------------------------------------ generative
    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict, **kwargs
    ) -> dict:
        return {
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "design": inference_outputs["design"],
        }

    def _distribution(self, eta: torch.Tensor, dropout: torch.Tensor | None, library):
        if self.likelihood == "gaussian":
            return eta
        scale = torch.softmax(eta, dim=-1)
        mu = library * scale
        if self.likelihood == "poisson":
            return Poisson(rate=mu, scale=scale)
        theta = self.log_theta.exp()
        if self.likelihood == "zinb":
            return ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=dropout, scale=scale)
        return NegativeBinomial(mu=mu, theta=theta, scale=scale)

    @auto_move_data
    def generative(
        self, z: torch.Tensor, library: torch.Tensor, design: torch.Tensor | None
    ) -> dict:
        """Decode ``z_FE`` with the design's random effects (``px``) and with ``Z = 0``.

        ``px`` is the mixed-effects output; in ``"fixed"`` mode, or with ``design=None``, it
        is the FE output. ``px_fe`` is the FE-only output.
        """
        out: dict = {}
        if self.has_random_effects and design is not None:
            eta_me, drop_me = self.decoder(z, design)
            out["eta"] = eta_me
            out["px"] = self._distribution(eta_me, drop_me, library)
        # Reconstructing counts *with* their batch effect from Z = 0 rewards the encoder for
        # keeping the batch in z_FE, against the adversary; it also anchors which cells align
        # across batches. With detach_fe_reconstruction the Z = 0 path trains the decoder only.
        # In "random" mode the FE decode is only a target for the RE path.
        detach = self.detach_fe_reconstruction and self.mode == "mixed"
        z_fe = z.detach() if detach else z
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.mode != "random"):
            eta_fe, drop_fe = self.decoder(z_fe, None)
        out["eta_fe"] = eta_fe
        out["px_fe"] = self._distribution(eta_fe, drop_fe, library)
        if self.fe_reconstruction_effects == "output" and "px" in out:
            # The target of the FE-only reconstruction: Z = 0 plus the per-gene batch effects.
            eta_anchor = self.decoder.output_effects(eta_fe, design)
            out["eta_anchor"] = eta_anchor
            out["px_anchor"] = self._distribution(eta_anchor, drop_fe, library)
        if "px" not in out:
            out["eta"], out["px"] = out["eta_fe"], out["px_fe"]
        return out

    # ------------------------------------------------------------------ losses
    def _count_terms(self, x: torch.Tensor) -> torch.Tensor | None:
        """The part of the log-likelihood shared by every decode of ``x`` (see nn._likelihoods)."""
        if self.likelihood == "nb":
            return nb_count_terms(x, self.log_theta.exp())
        if self.likelihood == "poisson":
            return -log_factorial(x)
        return None

    def _reconstruction(
        self, x: torch.Tensor, eta: torch.Tensor, library: torch.Tensor, px, shared
    ) -> torch.Tensor:
        """Per-cell negative log-likelihood (sum of squares for ``"gaussian"``)."""
        if self.likelihood == "gaussian":
            return ((x - eta) ** 2).sum(-1)
        if self.likelihood == "zinb":
            return -px.log_prob(x).sum(-1)
        log_mu = torch.log(library) + torch.log_softmax(eta, dim=-1)
        if self.likelihood == "poisson":
            return -(shared + poisson_mean_terms(x, log_mu))
        log_theta = self.log_theta
        return -(shared + nb_mean_terms(x, log_mu, log_theta.exp(), log_theta))

    def _log_scale(self, eta: torch.Tensor) -> torch.Tensor:
        return eta if self.likelihood == "gaussian" else torch.log_softmax(eta, dim=-1)

    def adversary_input(self, inference_outputs: dict) -> torch.Tensor:
        """The FE activations the adversary sees (latent, or every encoder layer)."""
        z = inference_outputs["z"]
        if self.adversary_on == "all":
            z = torch.cat([*inference_outputs["hidden"], z], dim=-1)
        return self.with_label(z, inference_outputs)

    def current_adversary_weight(self) -> float | torch.Tensor:
        """``lambda_g`` before warm-up: a number, or the reconstruction-scaled ``"auto"``.

        ``"auto"`` gives a 0-d tensor on the module's device (0 before the first training
        step), so the training step never waits for the GPU to read it.
        """
        if self.adversary_weight != "auto":
            return float(self.adversary_weight)
        return self.adversary_scale * torch.nan_to_num(self.reconstruction_scale, nan=0.0)

    def objective(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        adversary_warmup: float,
        metrics: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ARMED objective per cell, before the KL term.

        ``rec(y, y_ME) + lambda_F rec(y, y_FE) - lambda_g CE(Z, adversary)`` plus the RE
        path's losses (its own parameters only), the Z-predictor's and the label heads'.
        """
        x = tensors["X"]
        batch_index = tensors["batch"]
        target = batch_index.view(-1).long()
        library = inference_outputs["library"]
        shared = self._count_terms(x)
        rec = self._reconstruction(
            x, generative_outputs["eta"], library, generative_outputs["px"], shared
        )
        loss = rec.mean()
        if self.mode == "mixed" and self.fe_reconstruction_weight > 0:
            part = "anchor" if "eta_anchor" in generative_outputs else "fe"
            rec_fe = self._reconstruction(
                x,
                generative_outputs[f"eta_{part}"],
                library,
                generative_outputs[f"px_{part}"],
                shared,
            )
            loss = loss + self.fe_reconstruction_weight * rec_fe.mean()
            metrics["reconstruction_loss_fe"] = rec_fe.mean().detach()

        if self.training:
            # Track the reconstruction scale that adversary_weight="auto" follows.
            # torch.where, not an if on the tensor: no GPU sync per step.
            current = rec.mean().detach()
            scale = self.reconstruction_scale
            scale.copy_(torch.where(torch.isnan(scale), current, 0.99 * scale + 0.01 * current))

        loss = loss + self.adversary_term(inference_outputs, target, adversary_warmup, metrics)

        if self.has_random_encoder:
            z_re = inference_outputs["z_re"]
            effect_mse = self._effect_mse(z_re, generative_outputs)
            head_logits = self.re_batch_head(z_re)
            head_ce = F.cross_entropy(head_logits, target)
            loss = loss + effect_mse.mean() + self.re_batch_weight * head_ce
            metrics["re_effect_mse"] = effect_mse.mean().detach()
            metrics["re_batch_accuracy"] = accuracy(head_logits, target)

        return self.shared_losses(tensors, inference_outputs, metrics, loss), rec

    def _effect_mse(self, z_re: torch.Tensor, generative_outputs: dict) -> torch.Tensor:
        """Per-cell error of ``z_RE`` reconstructing the decoder's batch effect on this cell."""
        effect = (
            self._log_scale(generative_outputs["eta"])
            - self._log_scale(generative_outputs["eta_fe"])
        ).detach()
        return ((self.re_effect_decoder(z_re) - effect) ** 2).mean(-1)

    def adaptation_loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        n_obs: int,
    ) -> torch.Tensor:
        """Objective for fitting new batches' random effects with everything else frozen.

        Mixed-effects reconstruction (trains the decoder's new rows), the RE encoder's
        batch-effect reconstruction (its new FiLM rows) and the KL divided by the number of
        query cells. Heads that predict the batch are skipped: they only know seen batches.
        """
        shared = self._count_terms(tensors["X"])
        rec = self._reconstruction(
            tensors["X"],
            generative_outputs["eta"],
            inference_outputs["library"],
            generative_outputs["px"],
            shared,
        )
        loss = rec.mean()
        if self.has_random_encoder:
            loss = loss + self._effect_mse(inference_outputs["z_re"], generative_outputs).mean()
        return loss + self.random_effects_kl() / max(n_obs, 1)
