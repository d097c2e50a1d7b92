"""``ArmedImageClassifier``: the ARMED mixed-effects CNN (ME-CNN) for microscopy crops."""

from __future__ import annotations

from typing import Any

import scvi
from anndata import AnnData

from .. import _validation as check
from ..module import ArmedCNNModule
from ..train import ArmedTrainingPlan
from ._image_base import ArmedImageModelBase


class ArmedImageClassifier(ArmedImageModelBase):
    """Mixed-effects CNN classifier of single-cell crops (ARMED's ME-CNN, AnnData-native).

    A conv backbone maps each crop to a batch-invariant embedding ``z_FE`` (an adversary on
    the pooled features of every block and on ``z_FE`` tries to tell the plate); a head
    predicts the label from ``z_FE`` alone (FE) and with per-plate random slopes on its hidden
    features and a random intercept on the logit (ME). Crops of plates never seen in training
    go through the calibrated Z-predictor (soft ``Z``) or, when it is unsure, ``Z = 0``.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (``labels_key`` required).
    mode
        ``"mixed"`` (FE + ME heads, default) or ``"fixed"`` (FE head only).
    n_latent
        Size of the embedding written to ``.obsm["X_armed_fe"]``.
    channels
        Output channels of each stride-2 conv block (their number sets the depth).
    adversary_weight
        ``lambda_g``. ``mode="fixed", adversary_weight=0`` is a plain CNN with the same
        backbone (the baseline of the benchmark).
    adversary_objective
        ``"confusion"`` (default) or ``"negative_ce"``.
    prior_sd
        Prior s.d. of the random slopes and intercepts.
    augment
        Random flips and 90-degree rotations of the training crops (cells have no
        orientation); off for data where orientation means something.
    conditional_adversary
        With labels, the adversary is told each crop's label and the FE side pushes it to
        ``p(plate | label)``: the plate is removed from ``z_FE`` *given* the label, so a
        phenotype confounded with plates (e.g. treated wells on some plates only) survives.
    seed
        Seed for weight initialisation.

    Examples
    --------
    >>> ArmedImageClassifier.setup_anndata(adata, image_key="image", batch_key="plate",
    ...                                    labels_key="label")
    >>> model = ArmedImageClassifier(adata)
    >>> model.train()
    >>> model.predict(adata_query, kind="me", soft=True)
    """

    _module_cls = ArmedCNNModule
    _training_plan_cls = ArmedTrainingPlan
    _requires_labels = True

    def __init__(
        self,
        adata: AnnData,
        mode: str = "mixed",
        n_latent: int = 32,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        adversary_weight: float = 1.0,
        adversary_objective: str = "confusion",
        prior_sd: float = 0.25,
        augment: bool = True,
        conditional_adversary: bool = True,
        seed: int = 0,
    ):
        check.check_anndata(adata)
        super().__init__(adata)
        scvi.settings.seed = seed
        n_channels, size, n_batch, n_labels = self._image_setup()
        self.module = self._module_cls(
            n_channels, size, n_batch, n_labels, mode=mode, n_latent=n_latent,
            channels=tuple(channels), adversary_weight=adversary_weight,
            adversary_objective=adversary_objective, prior_sd=prior_sd, augment=augment,
            conditional_adversary=conditional_adversary,
        )
        self._fit_training_statistics()
        self.batch_categories_: list = self._batch_categories()
        kind = "plain CNN" if mode == "fixed" and adversary_weight == 0 else f"mode={mode}"
        self._model_summary_string = (
            f"ArmedImageClassifier ({kind}): images {self.image_shape}, {n_batch} batches, "
            f"{n_labels} labels, embedding {n_latent}"
        )
        self.train_params_: dict[str, Any] = {}
        self.init_params_ = self._get_init_params(locals())
