"""Inference shared by every ARMED model: latents, batch probabilities, label predictions.

Every method here reads cells in chunks (each model's ``_query_chunks`` checks and reads its
data: genes for ``ArmedRNA``, images for the image models), works on cells of batches the model
never saw (see ``_routes``) and logs which route the cells took. None of them writes to the
AnnData.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from .. import _validation as check
from .._constants import LatentKind
from ..train import fit_temperature
from ._data import UNSEEN, batch_codes, check_indices
from ._routes import DEFAULT_ENTROPY_THRESHOLD, RouteCounts, check_threshold, route_design

logger = logging.getLogger(__name__)

DEFAULT_INFERENCE_BATCH_SIZE = 1024


class ArmedInferenceMixin:
    """Latents, batch probabilities, label predictions and (counterfactual) expression."""

    #: Normalised batch entropy above which a cell of an unseen batch gets ``Z = 0`` instead of
    #: the Z-predictor's soft ``Z``; see :mod:`armed_bio.model._routes`. Set per instance.
    entropy_threshold: float = DEFAULT_ENTROPY_THRESHOLD

    # ------------------------------------------------------------------ plumbing
    def _query_chunks(
        self, adata: AnnData, positions: np.ndarray, batch_size: int
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Check ``adata`` against the model, then return an iterator of input chunks.

        Must raise on bad input when called, not when iterated.
        """
        raise NotImplementedError

    def _cells(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        what: str,
        routes_used: bool = True,
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, np.ndarray]]:
        """Yield ``(positions, counts, design, batch codes)`` chunks; log the routes at the end."""
        self._check_if_trained(warn=False)
        adata = self.adata if adata is None else check.check_anndata(adata)
        setup = self.registry_["setup_args"]
        positions = check_indices(indices, adata.n_obs)
        if batch_size is None:
            batch_size = DEFAULT_INFERENCE_BATCH_SIZE
        chunks = self._query_chunks(adata, positions, batch_size)  # validates before yielding
        codes, unseen = batch_codes(adata, setup["batch_key"], self.batch_categories_, positions)
        threshold = check_threshold(self.entropy_threshold)
        self.module.eval()
        total = RouteCounts(unseen_batches=unseen)
        for part, x in chunks:
            x = x.to(self.device)
            design, counts = route_design(self.module, x, codes[part], threshold)
            total.add(counts)
            yield part, x, design, codes[part]
        if not self.module.has_random_effects:
            logger.info(f"{what} {len(positions)} cells (fixed-effects model: no batch route).")
        elif what:
            logger.info(total.message(what, threshold, routes_used))

    def _obs_names(self, adata: AnnData | None, indices) -> pd.Index:
        adata = self.adata if adata is None else check.check_anndata(adata)
        return adata.obs_names[check_indices(indices, adata.n_obs)]

    def _require_random_effects(self, what: str) -> None:
        if not self.module.has_random_effects:
            raise ValueError(
                f"{what} needs random effects, but this model was trained with mode='fixed'. "
                "Train with mode='mixed' (the default) or 'random'."
            )

    def _batch_code(self, batch) -> int | None:
        if batch is None:
            return None
        self._require_random_effects("A counterfactual batch")
        for code, category in enumerate(self.batch_categories_):
            if category == batch:
                return code
        raise ValueError(
            f"batch {batch!r} is not a batch the model knows ({list(self.batch_categories_)}). "
            "Use batch=None for the batch-free (fixed-effects) expression, or "
            "`model.adapt(query)` to give a new batch its own random effects."
        )

    def _decode_route(self, batch, observed: bool, noun: str) -> tuple[int | None, str]:
        """Batch code to decode as (``None``: Z = 0) and the log line's subject.

        ``observed=True`` keeps each cell's own design (``batch`` is then ignored).
        """
        if observed:
            return None, f"{noun} in their own batch of"
        code = self._batch_code(batch)
        if code is None:
            return None, f"Batch-free {noun.lower()} (Z = 0) of"
        return code, f"{noun} as batch {batch!r} of"

    @staticmethod
    def _decode_design(design: torch.Tensor, code: int | None) -> torch.Tensor | None:
        """The one-hot design of batch ``code`` for every cell of a chunk (``None``: Z = 0)."""
        if code is None:
            return None
        onehot = torch.zeros_like(design)
        onehot[:, code] = 1.0
        return onehot

    # ------------------------------------------------------------------ latents
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        kind: LatentKind = "fe",
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Return the batch-invariant (``kind="fe"``) or batch-specific (``"re"``) latent.

        Parameters
        ----------
        adata
            AnnData with the training genes in the training order; default: the training
            AnnData. It may hold batches the model never saw: ``z_FE`` does not depend on
            the batch, and ``z_RE`` of such cells uses the soft-``Z``/``Z = 0`` route.
        indices
            Cell positions (or a boolean mask) to embed; default all.
        kind
            ``"fe"``: fixed effects, ``z_FE``; ``"re"``: random effects, ``z_RE``.
        batch_size
            Cells per chunk.

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``.
        """
        self._check_kind(kind)
        key = "z" if kind == "fe" else "z_re"
        what = "z_FE of" if kind == "fe" else "z_RE of"
        parts = []
        for _, x, design, _ in self._cells(adata, indices, batch_size, what, kind == "re"):
            dummy = torch.zeros(x.shape[0], 1, device=x.device)
            parts.append(self.module.inference(x, dummy, design=design)[key].cpu())
        return torch.cat(parts).numpy()

    # ------------------------------------------------------------------ batch prediction
    def _batch_logits(self, adata, indices, batch_size) -> tuple[torch.Tensor, np.ndarray]:
        self._require_random_effects("The Z-predictor")
        logits, codes = [], []
        for _, x, _, batch in self._cells(adata, indices, batch_size, what=""):
            logits.append(self.module.z_predictor(self.module._normalise(x)[0]).cpu())
            codes.append(batch)
        return torch.cat(logits), np.concatenate(codes)

    @torch.inference_mode()
    def predict_batch_proba(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Calibrated probability of each seen batch for each cell (the Z-predictor's soft ``Z``).

        The temperature is fitted on the held-out cells after :meth:`train` (see
        :meth:`calibrate_batch_predictor`).

        Returns
        -------
        DataFrame of cells x seen batches; rows sum to 1.
        """
        logits, _ = self._batch_logits(adata, indices, batch_size)
        proba = torch.softmax(logits / self.module.z_temperature.cpu(), dim=-1).numpy()
        columns = self.batch_categories_[: self.module.n_batch_reference]
        return pd.DataFrame(proba, index=self._obs_names(adata, indices), columns=columns)

    @torch.inference_mode()
    def calibrate_batch_predictor(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> float:
        """Fit the Z-predictor's temperature on held-out cells of seen batches.

        :meth:`train` calls this on its validation cells. Call it yourself when training used
        every cell (``train_size=1.0``) and you have other held-out cells.

        Returns
        -------
        The fitted temperature (also stored in the model).
        """
        logits, codes = self._batch_logits(adata, indices, batch_size)
        if (codes == UNSEEN).any() or (codes >= self.module.n_batch_reference).any():
            raise ValueError(
                "Calibration needs cells of batches seen in training, with their batch in "
                f"adata.obs[{self.registry_['setup_args']['batch_key']!r}]; "
                f"{int((codes == UNSEEN).sum())} cells have another batch. Subset to seen "
                "batches."
            )
        temperature = fit_temperature(logits, torch.as_tensor(codes))
        self.module.z_temperature.fill_(temperature)
        logger.info(f"Z-predictor temperature fitted on {len(codes)} held-out cells: "
                    f"{temperature:.3g}.")
        return temperature

    # ------------------------------------------------------------------ labels
    def _label_categories(self) -> list:
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        return list(mapping.categorical_mapping)

    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        kind: Literal["fe", "me"] = "fe",
        soft: bool = False,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Predict cell labels with the FE head (``z_FE`` only) or the mixed-effects head.

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the training AnnData. Its label column,
            if any, is never read (it may hold categories the model has not seen).
        indices
            Cell positions (or a boolean mask); default all.
        kind
            ``"fe"``: the batch-invariant head. ``"me"``: FE logit plus the batch's random
            slopes and intercept; cells of unseen batches use the soft-``Z`` route.
        soft
            Return class probabilities instead of labels.
        batch_size
            Cells per chunk.

        Returns
        -------
        Array of predicted labels, or with ``soft=True`` a DataFrame of cells x labels (in the
        order of the training label categories).
        """
        if self.module.n_labels == 0:
            raise ValueError(
                "This model has no label head: it was set up without `labels_key`. Run "
                f"`{type(self).__name__}.setup_anndata(adata, batch_key=..., labels_key=...)` "
                "and train a new model."
            )
        if kind not in ("fe", "me"):
            raise ValueError(f"kind must be 'fe' or 'me', got {kind!r}.")
        if kind == "me":
            self._require_random_effects("The mixed-effects head")
        what = f"Labels from the {kind.upper()} head for"
        proba = []
        for _, x, design, _ in self._cells(adata, indices, batch_size, what, kind == "me"):
            z = self.module.encoder(self.module._normalise(x)[0])[0]
            fe, me = self.module.label_head(z, design)
            proba.append(torch.softmax(fe if kind == "fe" else me, dim=-1).cpu())
        proba = torch.cat(proba).numpy()
        categories = self._label_categories()
        if soft:
            return pd.DataFrame(proba, index=self._obs_names(adata, indices), columns=categories)
        return np.asarray(categories, dtype=object)[proba.argmax(-1)]
