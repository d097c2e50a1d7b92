"""``ArmedImage``: the ARMED mixed-effects conv autoencoder for microscopy crops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from .._docs import module_parameters
from ..module import ArmedImageModule
from ._image_base import ArmedImageModelBase


@module_parameters(ArmedImageModule, skip=("n_channels", "image_size", "n_batch", "n_labels"))
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
    {module_parameters}
    seed
        Seed for weight initialisation.
    """

    _module_cls = ArmedImageModule
    # 500 steps: 3.2 min on the U373 crops and 2.1 on 4 BBBC021 plates here; 1,000 gained
    # about 0.03 on the shape probe (benchmarks/results/image_u373.md, image_bbbc021_probes.md).
    _default_target_steps = 500

    def __init__(
        self,
        adata: AnnData,
        mode: str = "mixed",
        seed: int = 0,
        **module_kwargs: Any,
    ):
        super().__init__(adata, mode, seed, module_kwargs)
        module = self.module
        self._model_summary_string = (
            f"ArmedImage (mode={mode}): images {self.image_shape}, {module.n_batch} batches, "
            f"FE latent {module.n_latent}"
            + (f", RE latent {module.n_latent_re}" if module.has_random_encoder else "")
            + (f", {module.n_labels} labels" if module.n_labels else "")
        )
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
            if not observed:
                design = self._decode_design(design, code)
            out.append(self.module.decode(self.module.encode_fe(x), design).cpu())
        return torch.cat(out).numpy()
