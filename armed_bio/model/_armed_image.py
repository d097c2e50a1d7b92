"""``ArmedImage``: the ARMED mixed-effects conv autoencoder for microscopy crops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scvi
import torch
from anndata import AnnData

from .. import _validation as check
from ..module import ArmedImageModule
from ..train import ArmedTrainingPlan
from ._image_base import ArmedImageModelBase


class ArmedImage(ArmedImageModelBase):
    """Mixed-effects conv autoencoder of single-cell crops.

    Splits each crop into a batch-invariant latent ``z_FE`` (an adversary removes the plate
    from it) and a batch-specific latent ``z_RE`` (a conv encoder with FiLM random effects);
    the decoder renders ``z_FE`` with a plate's random effects (FiLM in every block and a
    per-channel gain/offset) or with none (``Z = 0``, the batch-free image). That gives
    counterfactual images: "this cell imaged on plate k" (:meth:`get_counterfactual_images`).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`; ``labels_key`` adds a phenotype head.
    mode
        ``"mixed"`` (default) or ``"fixed"`` (adversarial FE autoencoder, no random effects).
    n_latent, n_latent_re
        Sizes of ``z_FE`` and ``z_RE``.
    channels, re_channels
        Channels of the FE encoder/decoder blocks and of the RE encoder's blocks.
    adversary_weight, adversary_objective
        ``lambda_g`` and its form; ``0`` removes the adversary.
    fe_reconstruction_weight
        ``lambda_F``: weight of the batch-free reconstruction.
    hidden_prior_sd, output_prior_sd
        Prior s.d. of the FiLM and of the per-channel output random effects.
    classification_weight
        Weight of the phenotype head (only with ``labels_key``).
    augment
        Random flips and 90-degree rotations of the training crops (cells have no
        orientation); off for data where orientation means something.
    conditional_adversary
        With labels, the adversary is told each crop's label and the FE side pushes it to
        ``p(plate | label)``: the plate is removed from ``z_FE`` *given* the label, so a
        phenotype confounded with plates (e.g. treated wells on some plates only) survives.
    seed
        Seed for weight initialisation.
    """

    _module_cls = ArmedImageModule
    _training_plan_cls = ArmedTrainingPlan

    def __init__(
        self,
        adata: AnnData,
        mode: str = "mixed",
        n_latent: int = 32,
        n_latent_re: int = 8,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        re_channels: tuple[int, ...] = (8, 16, 32),
        adversary_weight: float = 1.0,
        adversary_objective: str = "confusion",
        fe_reconstruction_weight: float = 1.0,
        hidden_prior_sd: float = 0.25,
        output_prior_sd: float = 1.0,
        classification_weight: float = 1.0,
        augment: bool = True,
        conditional_adversary: bool = True,
        seed: int = 0,
    ):
        check.check_anndata(adata)
        super().__init__(adata)
        scvi.settings.seed = seed
        n_channels, size, n_batch, n_labels = self._image_setup()
        self.module = self._module_cls(
            n_channels, size, n_batch, mode=mode, n_latent=n_latent, n_latent_re=n_latent_re,
            channels=tuple(channels), re_channels=tuple(re_channels),
            adversary_weight=adversary_weight, adversary_objective=adversary_objective,
            fe_reconstruction_weight=fe_reconstruction_weight, hidden_prior_sd=hidden_prior_sd,
            output_prior_sd=output_prior_sd, n_labels=n_labels,
            classification_weight=classification_weight, augment=augment,
            conditional_adversary=conditional_adversary,
        )
        self._fit_training_statistics()
        self.batch_categories_: list = self._batch_categories()
        self._model_summary_string = (
            f"ArmedImage (mode={mode}): images {self.image_shape}, {n_batch} batches, "
            f"FE latent {n_latent}"
            + (f", RE latent {n_latent_re}" if self.module.has_random_encoder else "")
            + (f", {n_labels} labels" if n_labels else "")
        )
        self.train_params_: dict[str, Any] = {}
        self.init_params_ = self._get_init_params(locals())

    @torch.inference_mode()
    def get_counterfactual_images(
        self,
        adata: AnnData | None = None,
        batch: Any = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        observed: bool = False,
    ) -> np.ndarray:
        """Render cells as if imaged in ``batch``, or batch-free.

        Parameters
        ----------
        adata
            AnnData with crops of the training shape; default: the training AnnData. Crops of
            unseen plates are fine: only their ``z_FE`` is used (unless ``observed=True``).
        batch
            A training batch (plate) name: "this cell imaged on plate k". ``None``: the
            fixed-effects, batch-free image (``Z = 0``).
        indices
            Cell positions (or a boolean mask); default all.
        batch_size
            Cells per chunk.
        observed
            Render each cell with its own batch's random effects instead (its reconstruction;
            unseen plates use the soft-``Z``/``Z = 0`` route). ``batch`` must then be ``None``.

        Returns
        -------
        Float32 array ``(n_cells, C, H, W)`` in the scale of the stored crops (e.g. 0-255 for
        uint8 input; values are not clipped).
        """
        if observed and batch is not None:
            raise ValueError("Pass either batch= or observed=True, not both.")
        code, what = self._decode_route(batch, observed, "Image")
        out = []
        for _, x, design, _ in self._cells(adata, indices, batch_size, what, observed):
            z = self.module.encoder(self.module._normalise(x)[0])[0]
            if not observed:
                design = self._decode_design(design, code)
            out.append(self.module.render(z, design).cpu())
        return torch.cat(out).numpy()
