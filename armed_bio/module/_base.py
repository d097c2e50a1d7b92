"""The base of every ARMED module: batch design, adversary, shared heads and the KL.

:class:`ArmedModuleBase` holds what the RNA and image modules have in common, and the small
public interface the user-facing models call (nothing above this layer reaches into a
module's submodules):

- ``encode_fe(x)`` / ``encode_re(x, design)``: the latents of raw inputs;
- ``decode(z, design)``: the output for a latent and a design (``None``: ``Z = 0``);
- ``batch_logits(x)`` / ``batch_probabilities(x)``: the Z-predictor;
- ``classify(z, design)``: the FE and mixed-effects label logits;
- ``random_effect_layers()``: every random-effect layer by name, with the kind of its units.

A subclass builds ``encoder`` (and, by mode, ``decoder``, ``re_encoder``, ``label_head``,
``z_predictor``, ``adversary``) and implements ``_normalise``, ``adversary_input``,
``decode`` and, with a random-effects encoder, ``encode_re``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from scvi.module.base import BaseModuleClass, LossOutput
from torch import nn
from torch.nn import functional as F

from ..nn import Classifier, RandomEffect

ADVERSARY_OBJECTIVES: tuple[str, ...] = ("negative_ce", "confusion")
# Deterministic latents still report a variance so scvi helpers built on Normal(qzm, qzv) work.
DETERMINISTIC_VAR = 1e-8
# Submodules that may hold random effects, in the order their KL terms are added.
RANDOM_EFFECT_PARTS: tuple[str, ...] = ("decoder", "re_encoder", "label_head")

# Hidden units of the adversary's MLP unless a module asks for another width.
ADVERSARY_HIDDEN = 64

# Per-step moving-average rate of the adversary's cluster centres and batch mixes.
CLUSTER_MOMENTUM = 0.05

UnitKind = Literal["gene", "channel", "label", "hidden"]


class RandomEffectLayer(NamedTuple):
    """A random-effect layer of a module and what its units are."""

    layer: RandomEffect
    units: UnitKind


def check_objective(objective: str) -> str:
    """Return ``objective`` if it is one of :data:`ADVERSARY_OBJECTIVES`, else raise."""
    if objective not in ADVERSARY_OBJECTIVES:
        raise ValueError(
            f"adversary_objective must be one of {ADVERSARY_OBJECTIVES}, got {objective!r}."
        )
    return objective


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Detached fraction of rows whose arg-max is ``target``."""
    return (logits.argmax(-1) == target).float().mean().detach()


def latent_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-cell ``KL(N(mean, exp(log_var)) || N(0, I))``, summed over latent dimensions."""
    return 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1.0).sum(-1)


def adversary_penalty(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: float | torch.Tensor,
    objective: str,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return the term the FE networks add to their loss to fool the adversary, and metrics.

    ``"negative_ce"``: ``-weight * CE`` (the ARMED paper's form). ``"confusion"``: ``weight``
    times ``KL(prior || adversary's prediction)``: zero when the adversary can do no better than
    the prior, never rewarding a confidently wrong adversary. The prior is uniform over the
    ``K`` batches by default (the KL is then the cross-entropy against uniform minus
    ``log K``); ``prior`` gives one distribution per cell (``(cells, K)``), e.g. the batch
    frequencies among cells of the same label for a label-conditional adversary.
    """
    ce = F.cross_entropy(logits, target)
    if objective == "confusion":
        log_p = torch.log_softmax(logits, dim=-1)
        if prior is None:
            term = weight * (-log_p.mean(-1).mean() - math.log(logits.shape[-1]))
        else:
            kl = (prior * (torch.log(prior.clamp(min=1e-12)) - log_p)).sum(-1)
            term = weight * kl.mean()
    else:
        term = -weight * ce
    metrics = {
        "adversary_ce": ce.detach(),
        "adversary_accuracy": accuracy(logits, target),
        # A tensor weight stays on its device: float() would wait for the GPU every step.
        "adversary_weight": torch.as_tensor(weight, dtype=ce.dtype, device=ce.device).detach(),
    }
    return term, metrics


class ArmedModuleBase(BaseModuleClass):
    """Base of the ARMED modules (not used directly).

    Parameters
    ----------
    n_batch
        Number of batches seen in training (rows of every random effect).
    mode
        The model's mode; :attr:`has_random_effects` reads it.
    n_labels
        Number of cell labels (``0``: none).
    conditional_adversary
        With labels, tell the adversary each cell's label and push ``z_FE`` towards
        independence of the batch *given* the label: where labels and batches are confounded
        (a cell type missing from some batches), an unconditional adversary erases the label
        along with the batch.
    adversary_objective
        ``"negative_ce"`` (``-lambda_g * CE``, the paper's form) or ``"confusion"`` (KL from
        the batch prior, uniform or ``p(batch | label)``, to the adversary's prediction).
    classification_weight
        Weight of the label heads' cross-entropy.
    """

    #: Modes in which the module has random effects.
    random_effect_modes: tuple[str, ...] = ("mixed",)
    #: Arguments whose default changed in 0.3.0, with their earlier defaults: models saved
    #: before 0.3.0 recorded only the arguments given, and load with these for the rest.
    defaults_before_0_3: dict[str, Any] = {}
    #: Arguments added after 0.3, with the value that model files saved without them had
    #: (the behaviour of those files), so old files load as they were trained.
    added_arguments: dict[str, Any] = {}
    #: Whether the module builds a random-effects encoder in those modes.
    builds_random_encoder: bool = True
    #: Names of the decoder's per-output random scale and offset (for genes, the offset is a
    #: per-batch log fold change).
    output_scale_layer = "decoder.output_scale"
    output_offset_layer = "decoder.output_offset"
    #: What the decoder's output units are.
    output_units: UnitKind = "gene"
    #: Registry key of the data in a minibatch.
    data_key = "X"

    def __init__(
        self,
        n_batch: int,
        mode: str,
        n_labels: int,
        conditional_adversary: bool,
        adversary_objective: str,
        classification_weight: float,
    ):
        super().__init__()
        self.n_batch = n_batch
        # Batches seen in training: the size of the adversary, the batch heads and the
        # Z-predictor. n_batch (random-effect rows) grows when new batches are adapted.
        self.n_batch_reference = n_batch
        self.mode = mode
        self.n_labels = n_labels
        self.adversary_objective = check_objective(adversary_objective)
        self.classification_weight = classification_weight
        self.conditional_adversary = bool(conditional_adversary) and n_labels > 0
        # p(batch | label) of the training cells (the model fills it; saved with the weights).
        self.register_buffer(
            "batch_given_label", torch.full((max(n_labels, 1), n_batch), 1.0 / n_batch)
        )
        # Clusters of z_FE the adversary is conditioned on without labels (0: none).
        self.n_adversary_clusters = 0
        self.centre_adversary_clusters = False

    # ------------------------------------------------------------------ what the mode has
    @property
    def has_random_effects(self) -> bool:
        """Whether the module has per-batch random effects (and a Z-predictor)."""
        return self.mode in self.random_effect_modes

    @property
    def has_random_encoder(self) -> bool:
        """Whether the module has a random-effects encoder (a ``z_RE``)."""
        return self.builds_random_encoder and self.has_random_effects

    @property
    def has_adversary(self) -> bool:
        """Whether an adversary removes the batch from ``z_FE``."""
        raise NotImplementedError

    def _add_z_predictor(self, z_predictor: nn.Module) -> None:
        """Add the Z-predictor: batch probabilities for cells of batches never seen in training.

        Its temperature is fitted on held-out cells after training.
        """
        self.z_predictor = z_predictor
        self.register_buffer("z_temperature", torch.tensor(1.0))

    def _add_adversary_clusters(self, n_clusters: int, n_latent: int, centred: bool) -> None:
        """Condition the adversary on ``n_clusters`` online k-means clusters of ``z_FE``.

        Without labels, a global adversary removes whatever predicts the batch over the whole
        latent: mostly the cell-type mix, which is biology, while the batch stays inside each
        cell type (what kBET and iLISI measure). Told each cell's cluster, the adversary must
        find the batch *within* clusters, and the ``"confusion"`` objective's prior becomes
        the cluster's own batch mix. Centres and mixes follow ``z_FE`` during training (an
        exponential moving average per step) and are saved with the weights.

        ``centred``: cluster ``z_FE`` less its batch's running mean. Where the batch moves the
        whole latent (large effects, early in training), k-means of the raw latent splits by
        batch, and an adversary told a batch-pure cluster predicts the batch from the cluster
        alone, so nothing pushes the encoder to mix it. Centred, the same cell type of every
        batch falls into one cluster and the adversary must look at the activations.
        """
        if n_clusters < 2:
            raise ValueError(f"adversary_clusters must be 0 or at least 2, got {n_clusters}.")
        self.n_adversary_clusters = n_clusters
        self.centre_adversary_clusters = bool(centred)
        self.register_buffer("cluster_centres", torch.zeros(n_clusters, n_latent))
        self.register_buffer(
            "batch_given_cluster", torch.full((n_clusters, self.n_batch), 1.0 / self.n_batch)
        )
        self.register_buffer("clusters_started", torch.tensor(False))
        if self.centre_adversary_clusters:
            self.register_buffer("batch_latent_means", torch.zeros(self.n_batch, n_latent))

    def _cluster_space(self, z: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """``z_FE`` where the adversary's clusters live: less each cell's batch mean if centred."""
        z = z.detach()
        if not self.centre_adversary_clusters:
            return z
        means = self.batch_latent_means
        return z - design[:, : means.shape[0]].to(z.dtype) @ means

    @torch.no_grad()
    def update_clusters(self, z: torch.Tensor, target: torch.Tensor, design: torch.Tensor) -> None:
        """One online k-means step of the adversary's clusters on a minibatch's ``z_FE``.

        The first minibatch seeds the centres with its cells (and the batch means with its
        own); afterwards each centre moves a fraction :data:`CLUSTER_MOMENTUM` towards the
        mean of its cells, its batch mix towards theirs, and each batch's latent mean
        towards its cells' mean. A centre (or batch) with no cells in the minibatch stays.
        """
        z = z.detach()
        n = self.n_adversary_clusters
        started = bool(self.clusters_started)
        if self.centre_adversary_clusters:
            members = F.one_hot(target, self.batch_latent_means.shape[0]).to(z.dtype)
            rate = None if started else 1.0  # the first minibatch sets the means
            self._lerp_group_means(self.batch_latent_means, members, z, rate)
        zc = self._cluster_space(z, design)
        if not started:
            seeds = torch.randperm(zc.shape[0], device=zc.device)[:n]
            self.cluster_centres.copy_(zc[seeds.repeat(-(-n // max(len(seeds), 1)))[:n]])
            self.clusters_started.fill_(True)
        one_hot = F.one_hot(torch.cdist(zc, self.cluster_centres).argmin(-1), n).to(z.dtype)
        self._lerp_group_means(self.cluster_centres, one_hot, zc)
        batches = F.one_hot(target, self.batch_given_cluster.shape[1]).to(z.dtype)
        self._lerp_group_means(self.batch_given_cluster, one_hot, batches)

    @staticmethod
    def _lerp_group_means(
        buffer: torch.Tensor, members: torch.Tensor, values: torch.Tensor, rate: float | None = None
    ) -> None:
        """Move each row of ``buffer`` towards the mean ``values`` of its ``members`` (one-hot)."""
        counts = members.sum(0)
        means = (members.T @ values) / counts.clamp(min=1).unsqueeze(-1)
        present = (counts > 0).unsqueeze(-1)
        buffer.lerp_(torch.where(present, means, buffer), rate or CLUSTER_MOMENTUM)

    def clusters_of(self, z: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """The adversary's cluster of each row of ``z_FE`` (nearest centre)."""
        return torch.cdist(self._cluster_space(z, design), self.cluster_centres).argmin(-1)

    def _add_adversary(
        self, n_features: int, n_hidden: int = ADVERSARY_HIDDEN, n_layers: int = 1
    ) -> None:
        """Add the adversary on ``n_features`` FE activations (and the label, if conditional)."""
        n_in = n_features + self.n_adversary_label_inputs
        self.adversary = Classifier(n_in, self.n_batch_reference, n_hidden, n_layers)

    # ------------------------------------------------------------------ design matrix
    def design_matrix(self, batch_index: torch.Tensor) -> torch.Tensor:
        """One-hot ``Z`` of shape ``(batch, n_batch)`` from integer codes ``(batch, 1)``."""
        return F.one_hot(batch_index.view(-1).long(), self.n_batch).float()

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the encoders' input and, for counts, the library size."""
        raise NotImplementedError

    @torch.no_grad()
    def add_batches(self, init_design: torch.Tensor) -> None:
        """Give ``n_new`` new batches random effects; row ``i`` starts at ``init_design[i] @ U``.

        ``init_design`` has shape ``(n_new, n_batch)`` (e.g. the mean soft ``Z`` of the new
        batch's cells), so a new batch starts as the mixture of the seen batches it resembles.
        """
        for module in self.modules():
            if isinstance(module, RandomEffect):
                module.add_batches(init_design.to(module.loc) @ module.mean)
        self.n_batch += init_design.shape[0]

    # ------------------------------------------------------------------ inference plumbing
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        out = {"x": tensors[self.data_key], "batch_index": tensors["batch"]}
        if self.conditional_adversary:
            out["labels"] = tensors["labels"]
        return out

    def _encoded(
        self,
        z: torch.Tensor,
        x_in: torch.Tensor,
        design: torch.Tensor | None,
        batch_index: torch.Tensor | None,
        labels: torch.Tensor | None,
        **extra: torch.Tensor,
    ) -> dict:
        """The inference outputs every module returns, plus its own ``extra`` ones.

        ``design`` defaults to the one-hot membership of ``batch_index``; ``labels`` only pass
        through, for the label-conditional adversary.
        """
        if design is None:
            design = self.design_matrix(batch_index)
        out = {
            "z": z,
            "qzm": z,
            "qzv": torch.full_like(z, DETERMINISTIC_VAR),
            "x_in": x_in,
            "design": design,
            **extra,
        }
        if labels is not None:
            out["labels"] = labels
        return out

    # ------------------------------------------------------------------ public interface
    def encode_fe(self, x: torch.Tensor) -> torch.Tensor:
        """The batch-invariant latent ``z_FE`` of raw inputs ``x``."""
        return self.encoder(self._normalise(x)[0])[0]

    def encode_re(self, x: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """The batch-specific latent ``z_RE`` of raw inputs ``x`` under ``design``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        """The output for ``z_FE`` with design ``Z`` (``None``: ``Z = 0``, batch-free)."""
        raise NotImplementedError

    def batch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Z-predictor logits ``(cells, n_batch_reference)`` of raw inputs ``x``."""
        return self.z_predictor(self._normalise(x)[0])

    @torch.no_grad()
    def batch_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(cells, n_batch_reference)`` of each seen batch."""
        return torch.softmax(self.batch_logits(x) / self.z_temperature, dim=-1)

    def classify(
        self, z: torch.Tensor, design: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FE and mixed-effects label logits of ``z_FE`` under ``design``."""
        return self.label_head(z, design)

    def random_effect_layers(self) -> dict[str, RandomEffectLayer]:
        """Every random-effect layer by its name in the module, with the kind of its units.

        Units are the output units (genes or channels) for the decoder's output scale and
        offset, labels for the label head's intercept and hidden units otherwise.
        """
        output_layers = {self.output_scale_layer, self.output_offset_layer}
        layers = {}
        for name, layer in self.named_modules():
            if not isinstance(layer, RandomEffect):
                continue
            if name in output_layers:
                units = self.output_units
            elif name == "label_head.intercept":
                units = "label"
            else:
                units = "hidden"
            layers[name] = RandomEffectLayer(layer, units)
        return layers

    # ------------------------------------------------------------------ adversary
    @property
    def n_adversary_label_inputs(self) -> int:
        """Extra adversary inputs: the one-hot label (or cluster) it is conditioned on."""
        if self.conditional_adversary:
            return self.batch_given_label.shape[0]
        return self.n_adversary_clusters

    def adversary_input(self, inference_outputs: dict) -> torch.Tensor:
        """The FE activations the adversary sees."""
        raise NotImplementedError

    def _adversary_condition(self, inference_outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's label (or cluster) code and the table of ``p(batch | code)``."""
        if self.conditional_adversary:
            return inference_outputs["labels"].view(-1).long(), self.batch_given_label
        clusters = self.clusters_of(inference_outputs["z"], inference_outputs["design"])
        return clusters, self.batch_given_cluster

    def with_label(self, h: torch.Tensor, inference_outputs: dict) -> torch.Tensor:
        """``h`` with the one-hot label (or cluster) appended when the adversary is conditional."""
        if not self.n_adversary_label_inputs:
            return h
        codes, table = self._adversary_condition(inference_outputs)
        one_hot = F.one_hot(codes, table.shape[0]).to(h.dtype)
        return torch.cat([h, one_hot], dim=-1)

    def adversary_prior(self, inference_outputs: dict) -> torch.Tensor | None:
        """Per-cell ``p(batch | label or cluster)`` for the conditional ``"confusion"``."""
        if not self.n_adversary_label_inputs:
            return None
        codes, table = self._adversary_condition(inference_outputs)
        return table[codes]

    def adversary_loss(
        self, inference_outputs: dict, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the adversary on detached FE activations."""
        logits = self.adversary(self.adversary_input(inference_outputs).detach())
        target = batch_index.view(-1).long()
        return F.cross_entropy(logits, target), accuracy(logits, target)

    def current_adversary_weight(self) -> float | torch.Tensor:
        """``lambda_g`` before warm-up."""
        return self.adversary_weight

    def adversary_term(
        self, inference_outputs: dict, target: torch.Tensor, warmup: float, metrics: dict
    ) -> torch.Tensor:
        """The FE networks' penalty for letting the adversary tell the batch (0 without one)."""
        if not self.has_adversary:
            return torch.zeros((), device=target.device)
        if self.training and self.n_adversary_clusters and not self.conditional_adversary:
            self.update_clusters(inference_outputs["z"], target, inference_outputs["design"])
        logits = self.adversary(self.adversary_input(inference_outputs))
        weight = self.current_adversary_weight() * warmup
        term, adv_metrics = adversary_penalty(
            logits,
            target,
            weight,
            self.adversary_objective,
            self.adversary_prior(inference_outputs),
        )
        metrics.update(adv_metrics)
        return term

    # ------------------------------------------------------------------ shared losses
    def shared_losses(
        self,
        tensors: dict,
        inference_outputs: dict,
        metrics: dict,
        loss: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``loss`` (default 0) plus the Z-predictor and label-head losses, by mode."""
        target = tensors["batch"].view(-1).long()
        if loss is None:
            loss = torch.zeros((), device=target.device)
        if self.has_random_effects:
            z_logits = self.z_predictor(inference_outputs["x_in"])
            loss = loss + F.cross_entropy(z_logits, target)
            metrics["z_predictor_accuracy"] = accuracy(z_logits, target)
        if self.n_labels > 0:
            labels = tensors["labels"].view(-1).long()
            fe, me = self.label_head(inference_outputs["z"], inference_outputs["design"])
            ce = F.cross_entropy(fe, labels)
            if self.has_random_effects:
                ce = ce + F.cross_entropy(me, labels)
            loss = loss + self.classification_weight * ce
            metrics["label_accuracy_fe"] = accuracy(fe, labels)
            metrics["label_accuracy_me"] = accuracy(me, labels)
        return loss

    def objective(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        adversary_warmup: float,
        metrics: dict,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The module's loss before the KL term, and its per-cell reconstruction error.

        ``None`` for the reconstruction error when the module reconstructs nothing. Adds its
        metrics to ``metrics``.
        """
        raise NotImplementedError

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
        n_obs: int = 1,
        adversary_warmup: float = 1.0,
    ) -> LossOutput:
        """:meth:`objective` plus ``kl_weight * KL(q(U) || p(U)) / n_obs``.

        The KL is divided by the number of training cells so that, like the reconstruction
        term, the whole loss is an average per cell. A module without a reconstruction
        reports its loss as every cell's reconstruction error, for scvi's history. A module
        with a variational latent (``qz_log_var`` in its inference outputs) adds
        ``kl_weight * latent_kl_weight`` times the mean per-cell KL of ``q(z | x)`` to
        ``N(0, I)``, reported as ``kl_local``.
        """
        metrics: dict[str, torch.Tensor] = {}
        loss, rec = self.objective(
            tensors, inference_outputs, generative_outputs, adversary_warmup, metrics
        )
        kl = self.random_effects_kl()
        loss = loss + kl_weight * kl / max(n_obs, 1)
        if rec is None:
            rec = loss.detach().expand(tensors["batch"].shape[0])
        kl_local = torch.zeros_like(rec)
        if "qz_log_var" in inference_outputs:
            kl_local = latent_kl(inference_outputs["qzm"], inference_outputs["qz_log_var"])
            loss = loss + kl_weight * self.latent_kl_weight * kl_local.mean()
        return LossOutput(
            loss=loss,
            reconstruction_loss=rec,
            kl_local=kl_local,
            kl_global=kl,
            extra_metrics={k: v.detach() for k, v in metrics.items()},
        )

    def random_effects_kl(self) -> torch.Tensor:
        """Analytic KL of every random-effect posterior against its prior (a scalar)."""
        kl = None
        for name in RANDOM_EFFECT_PARTS:
            part = getattr(self, name, None)
            if part is not None:
                kl = part.kl_divergence() if kl is None else kl + part.kl_divergence()
        return kl if kl is not None else torch.zeros(())
