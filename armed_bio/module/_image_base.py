"""What the ARMED image modules share: normalisation, design matrix, adversary, Z-predictor."""

from __future__ import annotations

import torch
from scvi.module.base import BaseModuleClass
from torch.nn import functional as F

from ..nn import Classifier, ConvClassifier, pooled_features
from ._adversarial import AdversaryMixin, adversary_penalty, check_objective
from ._batch_design import DETERMINISTIC_VAR, BatchDesignMixin

IMAGE_MODES: tuple[str, ...] = ("mixed", "fixed")


def random_dihedral(x: torch.Tensor) -> torch.Tensor:
    """Per-image random horizontal/vertical flips and, for square images, a transpose.

    Together they draw uniformly from the 8 symmetries of the square (4 for rectangles).
    """
    n = x.shape[0]
    for dim in (-1, -2):
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(dim), x)
    if x.shape[-1] == x.shape[-2]:
        swap = torch.rand(n, device=x.device) < 0.5
        x = torch.where(swap[:, None, None, None], x.transpose(-1, -2), x)
    return x


class ArmedImageModuleBase(AdversaryMixin, BatchDesignMixin, BaseModuleClass):
    """Base of the image modules; see :class:`ArmedCNNModule` and :class:`ArmedImageModule`.

    Images arrive as ``(batch, C, H, W)`` tensors in their stored scale (e.g. uint8 values as
    floats) and are standardised per channel with ``image_mean``/``image_std``: buffers set from
    the training images and saved with the weights.
    """

    def __init__(
        self,
        n_channels: int,
        image_size: tuple[int, int],
        n_batch: int,
        mode: str,
        n_latent: int,
        adversary_weight: float,
        adversary_objective: str,
        n_labels: int,
        augment: bool = True,
        conditional_adversary: bool = True,
    ):
        super().__init__()
        if mode not in IMAGE_MODES:
            raise ValueError(f"mode must be one of {IMAGE_MODES}, got {mode!r}.")
        if not isinstance(adversary_weight, int | float) or adversary_weight < 0:
            raise ValueError(
                f"adversary_weight must be a number >= 0, got {adversary_weight!r}."
            )
        self.augment = bool(augment)
        self.init_label_conditioning(conditional_adversary, n_labels, n_batch)
        self.n_channels = n_channels
        self.image_size = tuple(int(s) for s in image_size)
        self.n_batch = n_batch
        self.n_batch_reference = n_batch
        self.mode = mode
        self.n_latent = n_latent
        self.adversary_weight = float(adversary_weight)
        self.adversary_objective = check_objective(adversary_objective)
        self.n_labels = n_labels
        self.register_buffer("image_mean", torch.zeros(n_channels))
        self.register_buffer("image_std", torch.ones(n_channels))
        if self.has_random_effects:
            self.z_predictor = ConvClassifier(n_channels, n_batch)
            self.register_buffer("z_temperature", torch.tensor(1.0))

    def _build_adversary(self, n_features: int) -> None:
        if self.has_adversary:
            n_in = n_features + self.n_adversary_label_inputs
            self.adversary = Classifier(n_in, self.n_batch, n_hidden=64)

    @property
    def has_adversary(self) -> bool:
        return self.adversary_weight > 0

    @property
    def has_random_effects(self) -> bool:
        return self.mode == "mixed"

    def current_adversary_weight(self) -> float:
        return self.adversary_weight

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Per-channel standardised images (and no library size)."""
        return (x - self.image_mean[:, None, None]) / self.image_std[:, None, None], None

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        """Back from standardised units to the stored image scale."""
        return y * self.image_std[:, None, None] + self.image_mean[:, None, None]

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        out = {"x": tensors["image"], "batch_index": tensors["batch"]}
        if self.conditional_adversary:
            out["labels"] = tensors["labels"]
        return out

    def adversary_input(self, inference_outputs: dict) -> torch.Tensor:
        h = pooled_features(inference_outputs["features"], inference_outputs["z"])
        return self.with_label(h, inference_outputs)

    def _encode(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        design: torch.Tensor | None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``z_FE`` and the backbone's feature maps of standardised ``x``; the design ``Z``.

        In training, with ``augment``, each crop is randomly flipped and (when square) rotated
        by a multiple of 90 degrees first: a cell has no preferred orientation. The
        autoencoder reconstructs the augmented crop, so input and target stay paired.
        """
        if self.training and self.augment:
            x = random_dihedral(x)
        x_in, _ = self._normalise(x)
        z, features = self.encoder(x_in)
        if design is None:
            design = self.design_matrix(batch_index)
        out = {"z": z, "qzm": z, "qzv": torch.full_like(z, DETERMINISTIC_VAR),
               "features": features, "x_in": x_in, "design": design}
        if labels is not None:
            out["labels"] = labels
        return out

    def _adversary_term(
        self, inference_outputs: dict, target: torch.Tensor, warmup: float, metrics: dict
    ) -> torch.Tensor:
        """The FE networks' penalty for letting the adversary tell the batch (0 without one)."""
        if not self.has_adversary:
            return torch.zeros((), device=target.device)
        logits = self.adversary(self.adversary_input(inference_outputs))
        prior = self.adversary_prior(inference_outputs)
        term, adv = adversary_penalty(logits, target, self.adversary_weight * warmup,
                                      self.adversary_objective, prior)
        metrics.update(adv)
        return term

    def _shared_losses(
        self, tensors: dict, inference_outputs: dict, metrics: dict
    ) -> torch.Tensor:
        """Z-predictor and label-head losses (the parts every image module has)."""
        target = tensors["batch"].view(-1).long()
        loss = torch.zeros((), device=target.device)
        if self.has_random_effects:
            z_logits = self.z_predictor(inference_outputs["x_in"])
            loss = loss + F.cross_entropy(z_logits, target)
            metrics["z_predictor_accuracy"] = (z_logits.argmax(-1) == target).float().mean()
        if self.n_labels > 0:
            labels = tensors["labels"].view(-1).long()
            fe, me = self.label_head(inference_outputs["z"], inference_outputs["design"])
            ce = F.cross_entropy(fe, labels)
            if self.has_random_effects:
                ce = ce + F.cross_entropy(me, labels)
            loss = loss + self.classification_weight * ce
            metrics["label_accuracy_fe"] = (fe.argmax(-1) == labels).float().mean()
            metrics["label_accuracy_me"] = (me.argmax(-1) == labels).float().mean()
        return loss
