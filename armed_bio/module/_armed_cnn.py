"""The ARMED mixed-effects CNN classifier (ME-CNN) as an scvi-tools module."""

from __future__ import annotations

import torch

from .._arguments import check_arguments
from ..nn import ConvEncoder, MixedEffectsClassifier
from ._image_base import ArmedImageModuleBase


class ArmedCNNModule(ArmedImageModuleBase):
    """Conv FE backbone + adversary on multi-scale features + mixed-effects label head.

    The backbone maps an image to an embedding ``z_FE``. The head gives an FE logit and an ME
    logit with per-batch random slopes on its hidden features and a random intercept on the
    logit; both are trained, and so are the random effects (the reference ME-CNN never
    updated them). The adversary sees every backbone block (pooled) and ``z_FE``.

    Parameters
    ----------
    n_channels, image_size
        Image channels and ``(H, W)``.
    n_batch
        Number of training batches (plates).
    n_labels
        Number of classes.
    mode
        ``"mixed"``: ME head with random effects and a Z-predictor. ``"fixed"``: FE head only.
    n_latent
        Size of the embedding.
    channels
        Channels of each stride-2 conv block.
    adversary_weight
        ``lambda_g``; ``0`` removes the adversary (with ``mode="fixed"``: a plain CNN).
    adversary_objective
        ``"confusion"`` (default) or ``"negative_ce"``; see :func:`adversary_penalty`.
    hidden_prior_sd
        Prior s.d. of the random slopes and intercepts.
    n_hidden
        Width of the head's hidden layer (where the random slopes act).
    augment
        Random flips and 90-degree rotations of the training crops.
    conditional_adversary
        With labels, give the adversary each cell's label and use ``p(batch | label)`` as
        the confusion target: remove the batch, not the biology confounded with it.
    """

    builds_random_encoder = False

    def __init__(
        self,
        n_channels: int,
        image_size: tuple[int, int],
        n_batch: int,
        n_labels: int,
        mode: str = "mixed",
        n_latent: int = 32,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        adversary_weight: float = 1.0,
        adversary_objective: str = "confusion",
        hidden_prior_sd: float = 0.25,
        n_hidden: int = 64,
        augment: bool = True,
        conditional_adversary: bool = True,
    ):
        check_arguments(locals(), type(self).__name__)
        if n_labels < 2:
            raise ValueError(
                f"A classifier needs at least 2 label categories, got {n_labels}. Check the "
                "labels_key column (and that the training cells hold more than one label)."
            )
        super().__init__(
            n_channels,
            image_size,
            n_batch,
            mode,
            n_latent,
            adversary_weight,
            adversary_objective,
            n_labels,
            1.0,
            augment,
            conditional_adversary,
        )
        self.encoder = ConvEncoder(n_channels, self.image_size, n_latent, channels)
        self.label_head = MixedEffectsClassifier(
            n_latent,
            n_labels,
            n_batch if self.has_random_effects else 0,
            n_hidden,
            hidden_prior_sd,
        )
        if self.has_adversary:
            self._add_adversary(sum(channels) + n_latent)

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    def generative(self, **kwargs) -> dict:
        """Nothing: the classifier has no generative part."""
        return {}

    def objective(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        adversary_warmup: float,
        metrics: dict,
    ) -> tuple[torch.Tensor, None]:
        """``CE_FE + CE_ME + lambda_g * adversary term + CE_Z`` (no reconstruction)."""
        loss = self.shared_losses(tensors, inference_outputs, metrics)
        target = tensors["batch"].view(-1).long()
        loss = loss + self.adversary_term(inference_outputs, target, adversary_warmup, metrics)
        return loss, None
