"""The ARMED mixed-effects conv autoencoder for microscopy crops as an scvi-tools module."""

from __future__ import annotations

import torch
from scvi.module.base import auto_move_data
from torch import nn
from torch.nn import functional as F

from .._arguments import check_arguments
from ..nn import ConvEncoder, MixedEffectsClassifier, MixedEffectsConvDecoder
from ._base import accuracy
from ._image_base import ArmedImageModuleBase


class ArmedImageModule(ArmedImageModuleBase):
    """FE conv encoder + adversary, RE conv encoder with FiLM, mixed-effects conv decoder.

    - FE encoder: image -> ``z_FE``; the adversary sees every block (pooled) and ``z_FE``.
    - RE encoder: its own conv path with a FiLM random effect after every normalisation, a
      cooperative batch head on its output ``z_RE``.
    - Decoder: ``(z_FE, Z)`` -> image with FiLM random effects in every block and a random
      per-channel gain/offset; ``Z = 0`` renders the batch-free (FE-only) image, a one-hot
      ``Z`` renders the cell as imaged on that plate.
    - Optional phenotype head (FE and ME logits) on ``z_FE``; Z-predictor CNN for unseen plates.

    Loss per image (pixels standardised per channel): ``MSE(x, x_ME) + lambda_F MSE(x, x_FE)
    + lambda_g * adversary term + lambda_I * plate-swap invariance + CE(re head)
    + CE(Z-predictor) + w_c CE(labels) + kl_weight * KL / n_obs``.

    Parameters
    ----------
    n_channels, image_size
        Image channels and ``(H, W)``.
    n_batch
        Number of training batches.
    mode
        ``"mixed"`` (full ARMED) or ``"fixed"`` (adversarial FE autoencoder, no random effects).
    n_latent, n_latent_re
        Sizes of ``z_FE`` and ``z_RE``. ``n_latent=8`` (default since 0.10; 32 before) holds
        less of the plate and as much of the cell: over 2 seeds the plate probe from ``z_FE``
        on BBBC021 is 0.277 / 0.298 (32: 0.345 / 0.340; chance 0.25), within DMSO wells
        0.358 / 0.347 (0.380 / 0.384), the U373 movie 0.432 / 0.433 (0.464 / 0.527; chance
        0.33), while the cell's shape stays at 0.609 / 0.603 (0.604 / 0.613; pixels 0.585)
        and the phenotype of a held-out plate at 0.866 / 0.871 (0.898 / 0.873; pixels
        0.858). ``4`` removes no more of the plate and loses the biology (phenotype 0.863,
        shape 0.589; ``benchmarks/results/image_bbbc021_probes.md``, ``image_u373.md``).
    channels, re_channels
        Channels of the FE encoder blocks (the decoder mirrors them, scaled by
        ``decoder_width``) and of the (smaller) RE encoder.
    decoder_width
        The decoder's channels as a multiple of ``channels`` (block by block, rounded, at
        least 1). ``0.75`` (default since 0.6) probes as well as ``1`` (the encoder's
        mirror, the 0.5 decoder) on BBBC021 and U373 and trains faster; ``0.5`` is faster
        still, but its plate counterfactuals no longer follow the real plate shifts
        (``benchmarks/results/image_bbbc021_decoder_width.md``).
    adversary_weight, adversary_objective
        ``lambda_g`` and its form (see :func:`adversary_penalty`); ``0`` removes the adversary.
    fe_reconstruction_weight
        ``lambda_F``, weight of the batch-free reconstruction. ``0`` (default since 0.6):
        with centred random effects the ``Z = 0`` image is the average plate by construction,
        and asking ``z_FE`` to reproduce each plate's own crops without the plate kept the
        plate in it (BBBC021 plate probe 0.37 at 1.0, 0.32 at 0; the 0.5 default was 1.0).
    hidden_prior_sd, output_prior_sd
        Prior s.d. of the FiLM and of the per-channel output random effects.
    n_labels
        Number of phenotype labels; ``> 0`` adds a phenotype head on ``z_FE``.
    classification_weight
        Weight of the phenotype head's cross-entropy.
    augment
        Random flips and 90-degree rotations of the training crops.
    conditional_adversary
        With labels, give the adversary each cell's label and use ``p(batch | label)`` as
        the confusion target: remove the batch, not the biology confounded with it.
    decoder_upsampling
        ``"transposed"``: the decoder upsamples with stride-2 transposed convolutions (4x
        faster on CPU); ``"nearest"``: nearest-neighbour upsampling then a convolution, the
        decoder of armed_bio 0.4 and earlier (their saved models load with it).
    adversary_clusters
        Without labels, condition the adversary on this many online k-means clusters of
        ``z_FE`` (``0``: a global adversary, the 0.5 default), as in ``ArmedRNA``: the plate
        is removed within neighbourhoods of the latent rather than the phenotype mix across it.
    centre_adversary_clusters
        Cluster ``z_FE`` less each plate's running mean, so that a plate that shifts the
        whole latent does not get clusters of its own (see ``ArmedVAEModule``).
    centre_random_effects
        Make the decoder's random effects sum to zero over the seen plates, so that the
        plate-free (``Z = 0``) image is the average plate by construction (``False``: the
        0.5 default).
    re_downsample
        The RE encoder and the Z-predictor see each crop average-pooled by this factor
        (``2``, default since 0.8: a quarter of their multiply-adds; ``1``: full resolution,
        0.7 and earlier). Both are side branches that read the plate from the crop (the
        decoder does not use ``z_RE``), and what marks a plate (intensity, contrast,
        illumination) survives the pooling.
    invariance_weight
        ``lambda_I``, weight of the plate-swap invariance (:meth:`plate_swap_invariance`):
        real crops moved to another plate by the decoder's plate effect must keep their
        ``z_FE``. ``0`` (default) leaves it out. At ``3`` on BBBC021 (2 seeds) the plate
        probe within DMSO wells drops from 0.380 / 0.384 to 0.340 / 0.329 (chance 0.25),
        over all cells from 0.345 / 0.340 to 0.315 / 0.303, and the phenotype of a held-out
        plate rises from 0.898 / 0.873 to 0.912 / 0.906; on the U373 movies it changes
        nothing beyond seed noise (movie 0.506 / 0.476 vs 0.464 / 0.527). It costs 28 % more
        time per training step (``image_step_profile.md``), and a variant that took the
        reconstruction as the own-plate render was unstable (one seed lost the phenotype,
        0.787), so it is not the default (``benchmarks/results/image_bbbc021_probes.md``,
        ``image_u373.md``).
    intensity_jitter
        S.d. of the random per-crop gain (log scale) and offset (standardised units) under
        which the FE encoder sees each training crop (:func:`jitter_intensity`); the
        reconstruction target stays the crop as imaged, so the plate's intensity must come
        from its random effects. ``0.5`` (default since 0.11; ``0``: none, 0.10 and earlier):
        over 2 seeds on BBBC021 the plate probe from ``z_FE`` falls from 0.277 / 0.298 to
        0.263 / 0.272 (chance 0.25), within DMSO wells from 0.358 / 0.347 to 0.319 / 0.310,
        with the held-out phenotype at 0.875 / 0.875 (0.866 / 0.871; pixels 0.858); on the
        U373 movies the movie from 0.432 / 0.433 to 0.402 / 0.425 (chance 0.33). ``0.75``
        removes a little more plate (0.258 / 0.261; within DMSO 0.299 / 0.300) for a lower
        phenotype (0.862 / 0.868), and ``1.0`` (0.256 / 0.256; 0.293 / 0.296) brings the
        phenotype down to pixels' level (0.857 / 0.861)
        (``benchmarks/results/image_bbbc021_probes.md``, ``image_u373.md``).
    focus_jitter
        S.d. of the random per-crop, per-channel blur (positive) or sharpening (negative)
        strength under which the FE encoder sees each training crop (:func:`jitter_focus`),
        after the intensity jitter; the target stays the crop as imaged. ``0`` (default):
        none. It did not help on our data, so it is opt-in: on BBBC021 (on top of the 0.11
        defaults) the plate probe within DMSO wells was 0.327 at ``0.5`` and 0.329 at
        ``1.0`` (0.319 / 0.310 without), over all cells 0.262 / 0.262 (0.263 / 0.272), the
        held-out phenotype 0.872 / 0.874 (0.875); the U373 movie probe 0.406 at ``0.5``
        (0.402 / 0.425 without). What marks a plate within DMSO wells is not its focus.
    """

    #: The 0.5 defaults: ``ArmedImage(adata, **ArmedImageModule.defaults_before_0_6)``
    #: builds the 0.5 autoencoder.
    defaults_before_0_6 = {
        "fe_reconstruction_weight": 1.0,
        "intensity_jitter": 0.0,
        "adversary_clusters": 0,
        "centre_random_effects": False,
        "decoder_width": 1.0,
        "re_downsample": 1,
        "n_latent": 32,
    }
    #: The 0.6-0.7 defaults: ``ArmedImage(adata, **ArmedImageModule.defaults_before_0_8)``.
    defaults_before_0_8 = {"re_downsample": 1, "n_latent": 32, "intensity_jitter": 0.0}
    #: The 0.8-0.9 defaults: ``ArmedImage(adata, **ArmedImageModule.defaults_before_0_10)``.
    defaults_before_0_10 = {"n_latent": 32, "intensity_jitter": 0.0}
    #: The 0.10 defaults: ``ArmedImage(adata, **ArmedImageModule.defaults_before_0_11)``.
    defaults_before_0_11 = {"intensity_jitter": 0.0}
    #: Files from before 0.3 recorded only the arguments given; these defaults changed since.
    defaults_before_0_3 = {"fe_reconstruction_weight": 1.0, "n_latent": 32}
    #: Arguments added after 0.3 with the value that model files saved without them had.
    added_arguments = {
        "decoder_upsampling": "nearest",
        "adversary_clusters": 0,
        "centre_random_effects": False,
        "decoder_width": 1.0,
        "re_downsample": 1,
        "invariance_weight": 0.0,
        "intensity_jitter": 0.0,
        "focus_jitter": 0.0,
    }

    def __init__(
        self,
        n_channels: int,
        image_size: tuple[int, int],
        n_batch: int,
        mode: str = "mixed",
        n_latent: int = 8,
        n_latent_re: int = 8,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        re_channels: tuple[int, ...] = (8, 16, 32),
        adversary_weight: float = 1.0,
        adversary_objective: str = "confusion",
        fe_reconstruction_weight: float = 0.0,
        hidden_prior_sd: float = 0.25,
        output_prior_sd: float = 1.0,
        n_labels: int = 0,
        classification_weight: float = 1.0,
        augment: bool = True,
        conditional_adversary: bool = True,
        decoder_upsampling: str = "transposed",
        adversary_clusters: int = 5,
        centre_adversary_clusters: bool = False,
        centre_random_effects: bool = True,
        decoder_width: float = 0.75,
        re_downsample: int = 2,
        invariance_weight: float = 0.0,
        intensity_jitter: float = 0.5,
        focus_jitter: float = 0.0,
    ):
        check_arguments(locals(), type(self).__name__)
        super().__init__(
            n_channels,
            image_size,
            n_batch,
            mode,
            n_latent,
            adversary_weight,
            adversary_objective,
            n_labels,
            classification_weight,
            augment,
            conditional_adversary,
            z_predictor_downsample=re_downsample,
            intensity_jitter=intensity_jitter,
            focus_jitter=focus_jitter,
        )
        self.n_latent_re = n_latent_re
        self.fe_reconstruction_weight = fe_reconstruction_weight
        self.invariance_weight = float(invariance_weight)
        n_re = n_batch if self.has_random_effects else 0
        self.encoder = ConvEncoder(n_channels, self.image_size, n_latent, channels)
        self.decoder = MixedEffectsConvDecoder(
            n_latent,
            n_channels,
            self.image_size,
            tuple(max(1, round(c * decoder_width)) for c in channels),
            n_re,
            hidden_prior_sd,
            output_prior_sd,
            decoder_upsampling,
            centred=centre_random_effects,
        )
        self.centre_random_effects = centre_random_effects
        if self.has_random_encoder:
            self.re_encoder = ConvEncoder(
                n_channels,
                self.image_size,
                n_latent_re,
                re_channels,
                n_batch,
                hidden_prior_sd,
                downsample=re_downsample,
            )
            self.re_batch_head = nn.Linear(n_latent_re, n_batch)
        if n_labels > 0:
            self.label_head = MixedEffectsClassifier(
                n_latent, n_labels, n_re, prior_sd=hidden_prior_sd
            )
        if self.has_adversary:
            if adversary_clusters and not self.conditional_adversary:
                self._add_adversary_clusters(
                    adversary_clusters, n_latent, centred=centre_adversary_clusters
                )
            self._add_adversary(sum(channels) + n_latent)

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {"z": inference_outputs["z"], "design": inference_outputs["design"]}

    @auto_move_data
    def generative(self, z: torch.Tensor, design: torch.Tensor | None = None) -> dict:
        """Standardised reconstructions: with the cells' random effects (``x_me``) and FE-only.

        In training with ``fe_reconstruction_weight=0`` the FE-only decode is skipped: nothing
        uses it (with centred random effects it is the average plate by construction).
        """
        out = {}
        if not (self.training and self.has_random_effects and not self.fe_reconstruction_weight):
            out["x_fe"] = self.decoder(z, None)
        out["x_me"] = self.decoder(z, design) if self.has_random_effects else out["x_fe"]
        return out

    def encode_re(self, x: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """``z_RE`` of images ``x`` (stored scale) under ``design``."""
        return self.re_encoder(self._normalise(x)[0], design)[0]

    def decode(self, z: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        """Images in the stored scale decoded from ``z_FE`` with design ``Z`` (``None``: Z=0)."""
        return self.denormalise(self.decoder(z, design))

    def objective(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        adversary_warmup: float,
        metrics: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The autoencoder's loss on standardised pixels, before the KL term.

        ``MSE(x, x_ME) + lambda_F MSE(x, x_FE) + lambda_g * adversary term + CE(re head)
        + CE(Z-predictor) + w_c CE(labels)``.
        """
        x_in = inference_outputs["x_in"]
        target = tensors["batch"].view(-1).long()
        rec = ((generative_outputs["x_me"] - x_in) ** 2).mean(dim=(1, 2, 3))
        loss = rec.mean()
        if self.has_random_effects and self.fe_reconstruction_weight > 0:
            rec_fe = ((generative_outputs["x_fe"] - x_in) ** 2).mean(dim=(1, 2, 3))
            loss = loss + self.fe_reconstruction_weight * rec_fe.mean()
            metrics["reconstruction_loss_fe"] = rec_fe.mean()
        loss = loss + self.adversary_term(inference_outputs, target, adversary_warmup, metrics)
        if self.has_random_encoder:
            head = self.re_batch_head(inference_outputs["z_re"])
            loss = loss + F.cross_entropy(head, target)
            metrics["re_batch_accuracy"] = accuracy(head, target)
        if self.training and self.has_random_effects and self.invariance_weight > 0:
            inv = self.plate_swap_invariance(inference_outputs)
            loss = loss + self.invariance_weight * inv
            metrics["plate_swap_invariance"] = inv
        loss = loss + self.shared_losses(tensors, inference_outputs, metrics)
        return loss, rec

    def plate_swap_invariance(self, inference_outputs: dict) -> torch.Tensor:
        """How far ``z_FE`` moves when a crop is re-imaged on another plate.

        For a quarter of the minibatch, each real crop is moved to a random other plate ``k``
        by the decoder's own plate effect, ``x + D(z, Z_k) - D(z, Z_own)`` (the sharp crop as
        if imaged on plate ``k``; each render draws its own random-effects sample, so the
        move also spans the posterior's spread; no gradient into the decoder). It is encoded
        again and its ``z_FE`` compared with the original's (held fixed): the squared
        distance over the latent's variance in the minibatch. The adversary only sees plates
        as they occur; this asks the encoder to ignore what the decoder learned a plate
        changes.
        """
        z, x_in, design = (inference_outputs[k] for k in ("z", "x_in", "design"))
        m = max(1, z.shape[0] // 4)
        z0 = z[:m].detach()
        own = design[:m].argmax(-1)
        other = (own + torch.randint(1, self.n_batch, own.shape, device=own.device)) % self.n_batch
        with torch.no_grad():
            moved = self.decoder(z0, F.one_hot(other, self.n_batch).to(z))
            x_swap = x_in[:m] + moved - self.decoder(z0, design[:m])
        z_swap = self.encoder(x_swap)[0]
        return ((z_swap - z0) ** 2).mean() / (z0.var(dim=0).mean() + 1e-6)
