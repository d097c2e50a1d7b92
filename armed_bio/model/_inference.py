"""Inference on any AnnData with the model's genes: latents, expression, predictions.

Every method here reads cells in chunks (see ``_data``), works on cells of batches the model
never saw (see ``_routes``) and logs which route the cells took. None of them writes to the
AnnData unless asked to (``layer_key=``).
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
from .._constants import NORMALISATION_TARGET, LatentKind
from ..train import fit_temperature
from ._data import UNSEEN, batch_codes, check_genes, check_indices, check_query_matrix, iter_chunks
from ._routes import DEFAULT_ENTROPY_THRESHOLD, RouteCounts, check_threshold, route_design

logger = logging.getLogger(__name__)

DEFAULT_INFERENCE_BATCH_SIZE = 1024


class ArmedInferenceMixin:
    """Latents, batch probabilities, label predictions and (counterfactual) expression."""

    #: Normalised batch entropy above which a cell of an unseen batch gets ``Z = 0`` instead of
    #: the Z-predictor's soft ``Z``; see :mod:`armed_bio.model._routes`. Set per instance.
    entropy_threshold: float = DEFAULT_ENTROPY_THRESHOLD

    # ------------------------------------------------------------------ plumbing
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
        check_genes(adata, self.adata.var_names)
        setup = self.registry_["setup_args"]
        matrix = check_query_matrix(adata, setup.get("layer"), self.module.likelihood)
        positions = check_indices(indices, adata.n_obs)
        codes, unseen = batch_codes(adata, setup["batch_key"], self.batch_categories_, positions)
        threshold = check_threshold(self.entropy_threshold)
        self.module.eval()
        total = RouteCounts(unseen_batches=unseen)
        if batch_size is None:
            batch_size = DEFAULT_INFERENCE_BATCH_SIZE
        for part, x in iter_chunks(matrix, positions, batch_size):
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
                "`ArmedRNA.setup_anndata(adata, batch_key=..., labels_key='cell_type')` and "
                "train a new model."
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

    # ------------------------------------------------------------------ expression
    def _gene_positions(self, gene_list: Sequence[str] | None) -> np.ndarray:
        genes = pd.Index(self.adata.var_names)
        if gene_list is None:
            return np.arange(len(genes))
        if isinstance(gene_list, str):
            raise TypeError(f"gene_list must be a list of gene names, not {gene_list!r}.")
        positions = genes.get_indexer(list(gene_list))
        if (positions < 0).any():
            missing = [g for g, p in zip(gene_list, positions, strict=True) if p < 0]
            raise KeyError(
                f"{len(missing)} genes of gene_list are not among the model's genes (e.g. "
                f"{missing[:5]}). Check spelling against `model.adata.var_names`."
            )
        return positions

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

    def _expression(
        self, x: torch.Tensor, design: torch.Tensor | None, genes: np.ndarray, library_size
    ) -> np.ndarray:
        z = self.module.encoder(self.module._normalise(x)[0])[0]
        eta, _ = self.module.decoder(z, design)
        if self.module.likelihood == "gaussian":
            return eta[:, genes].cpu().numpy()
        scale = torch.softmax(eta, dim=-1)[:, genes]
        library = x.sum(-1, keepdim=True) if library_size == "observed" else library_size
        return (scale * library).cpu().numpy()

    def _stream_expression(
        self, adata, indices, gene_list, library_size, batch_size, batch, observed: bool
    ) -> Iterator[tuple[slice, np.ndarray]]:
        if not (library_size == "observed" or (
            isinstance(library_size, int | float) and library_size > 0
        )):
            raise ValueError(
                f"library_size must be a positive number or 'observed', got {library_size!r}."
            )
        genes = self._gene_positions(gene_list)
        code = None if observed else self._batch_code(batch)
        if observed:
            what = "Expression in their own batch of"
        elif code is None:
            what = "Batch-free expression (Z = 0) of"
        else:
            what = f"Expression as batch {batch!r} of"
        with torch.inference_mode():
            for part, x, design, _ in self._cells(adata, indices, batch_size, what, observed):
                if not observed:
                    design = None if code is None else torch.zeros_like(design)
                    if design is not None:
                        design[:, code] = 1.0
                yield part, self._expression(x, design, genes, library_size)

    def iter_counterfactual_expression(
        self,
        adata: AnnData | None = None,
        batch=None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["observed"] = NORMALISATION_TARGET,
        batch_size: int | None = None,
    ) -> Iterator[tuple[pd.Index, np.ndarray]]:
        """Stream :meth:`get_counterfactual_expression` chunk by chunk.

        Yields ``(obs_names, values)`` with ``values`` of shape ``(chunk, n_genes)``: memory
        stays bounded by ``batch_size`` whatever the number of cells, e.g. to write a large
        result to disk.
        """
        names = self._obs_names(adata, indices)
        for part, values in self._stream_expression(
            adata, indices, gene_list, library_size, batch_size, batch, observed=False
        ):
            yield names[part], values

    def _collect(self, adata, indices, gene_list, chunks) -> pd.DataFrame:
        genes = self._gene_positions(gene_list)
        names = self._obs_names(adata, indices)
        out = np.empty((len(names), len(genes)), dtype=np.float32)
        for part, values in chunks:
            out[part] = values
        return pd.DataFrame(out, index=names, columns=self.adata.var_names[genes], copy=False)

    def get_counterfactual_expression(
        self,
        adata: AnnData | None = None,
        batch=None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["observed"] = NORMALISATION_TARGET,
        batch_size: int | None = None,
        layer_key: str | None = None,
    ) -> pd.DataFrame:
        """Expected expression of cells as if measured in ``batch``.

        The cells' FE latent ``z_FE`` is decoded with batch ``batch``'s random effects, or with
        ``batch=None`` with ``Z = 0``: the batch-free, fixed-effects expression. Cells are
        processed in chunks of ``batch_size``; only the requested cells x genes are held.

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the training AnnData. Its cells may come
            from any batch, seen or not (their own batch is not used).
        batch
            A batch the model has random effects for (a training batch or one added with
            :meth:`adapt`), or ``None`` for batch-free expression.
        indices
            Cell positions (or a boolean mask); default all.
        gene_list
            Genes to return; default all.
        library_size
            Counts per cell of the output: a number (default 1e4, counts per 10k), or
            ``"observed"`` for expected counts at each cell's own depth. Ignored for
            ``likelihood="gaussian"`` (output on the log-normalised scale).
        batch_size
            Cells per chunk (default 1024).
        layer_key
            Also write the result to ``adata.layers[layer_key]`` (all cells and genes only).

        Returns
        -------
        DataFrame of cells x genes (float32).
        """
        if layer_key is not None and (indices is not None or gene_list is not None):
            raise ValueError(
                "layer_key writes a full cells x genes layer; call it without indices and "
                "gene_list, or keep the returned DataFrame instead."
            )
        chunks = self._stream_expression(
            adata, indices, gene_list, library_size, batch_size, batch, observed=False
        )
        result = self._collect(adata, indices, gene_list, chunks)
        if layer_key is not None:
            (self.adata if adata is None else adata).layers[layer_key] = result.to_numpy()
        return result

    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["observed"] = NORMALISATION_TARGET,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Expected expression of cells in their own batch (the mixed-effects prediction).

        Cells of unseen batches take the soft-``Z``/``Z = 0`` route. Arguments as in
        :meth:`get_counterfactual_expression`.
        """
        chunks = self._stream_expression(
            adata, indices, gene_list, library_size, batch_size, None, observed=True
        )
        return self._collect(adata, indices, gene_list, chunks)
