"""Expression outputs of ``ArmedRNA``: counterfactual, batch-free and observed-batch decodes.

Every method streams cells in chunks through ``ArmedInferenceMixin._cells`` (so unseen batches
take the soft-``Z``/``Z = 0`` route) and writes to the AnnData only when asked (``layer_key=``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._constants import NORMALISATION_TARGET
from ._data import check_genes, check_query_matrix, iter_chunks


class ArmedExpressionMixin:
    """Reading genes, and decoding expression as any batch or batch-free."""

    def _query_chunks(
        self, adata: AnnData, positions: np.ndarray, batch_size: int
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        check_genes(adata, self.adata.var_names)
        layer = self.registry_["setup_args"].get("layer")
        matrix = check_query_matrix(adata, layer, self.module.likelihood)
        return iter_chunks(matrix, positions, batch_size)

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
        code, what = self._decode_route(batch, observed, "Expression")
        with torch.inference_mode():
            for part, x, design, _ in self._cells(adata, indices, batch_size, what, observed):
                if not observed:
                    design = self._decode_design(design, code)
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
