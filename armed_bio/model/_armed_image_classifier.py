"""``ArmedImageClassifier``: the ARMED mixed-effects CNN (ME-CNN) for microscopy crops."""

from __future__ import annotations

from typing import Any

from anndata import AnnData

from .._docs import module_parameters
from ..module import ArmedCNNModule
from ._image_base import ArmedImageModelBase


@module_parameters(ArmedCNNModule, skip=("n_channels", "image_size", "n_batch", "n_labels"))
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
    {module_parameters}
    seed
        Seed for weight initialisation.

    Examples
    --------
    >>> ArmedImageClassifier.setup_anndata(adata, image_key="image", batch_key="plate",
    ...                                    labels_key="label")
    >>> model = ArmedImageClassifier(adata)
    >>> model.train()
    >>> model.predict(adata_query, head="me", soft=True)
    """

    _module_cls = ArmedCNNModule
    _requires_labels = True

    def __init__(
        self,
        adata: AnnData,
        mode: str = "mixed",
        seed: int = 0,
        **module_kwargs: Any,
    ):
        super().__init__(adata, mode, seed, module_kwargs)
        module = self.module
        kind = "plain CNN" if mode == "fixed" and not module.has_adversary else f"mode={mode}"
        self._model_summary_string = (
            f"ArmedImageClassifier ({kind}): images {self.image_shape}, {module.n_batch} "
            f"batches, {module.n_labels} labels, embedding {module.n_latent}"
        )
        self.init_params_ = self._get_init_params(locals())
