"""``ArmedRNA``: the user-facing ARMED mixed-effects autoencoder for scRNA-seq counts."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import LayerField

from .. import _validation as check
from .._arguments import check_arguments
from .._chunks import iter_chunks
from .._constants import NORMALISATION_TARGET, Likelihood, Mode
from .._docs import module_parameters
from ..module import ArmedVAEModule
from ..train import QueryMinibatches, fit_new_batches
from ._base import ArmedModelBase
from ._differential import DifferentialExpressionMixin
from ._query import UNSEEN, batch_codes, check_genes, check_query_matrix
from ._random_effects import gene_batch_variance, random_effects_table

logger = logging.getLogger(__name__)

# Optimizer steps a default adaptation aims for, and its epoch cap.
ADAPT_TARGET_STEPS = 400
MAX_ADAPT_EPOCHS = 100


@module_parameters(ArmedVAEModule, skip=("n_input", "n_batch", "n_labels"))
class ArmedRNA(DifferentialExpressionMixin, ArmedModelBase):
    """ARMED mixed-effects autoencoder for single-cell RNA-seq counts.

    One joint model: a fixed-effects (FE) encoder made batch-invariant by an adversary, a
    random-effects (RE) encoder with Bayesian FiLM random effects, and a mixed-effects decoder
    whose hidden layers and per-gene output carry per-batch random effects (``Z = 0`` gives
    batch-free expression).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    {module_parameters}
    seed
        Seed for weight initialisation.

    Examples
    --------
    >>> armed_bio.model.ArmedRNA.setup_anndata(adata, batch_key="batch")
    >>> model = armed_bio.model.ArmedRNA(adata)
    >>> model.train()
    >>> model.write_to_adata()  # .obsm["X_armed_fe"], .obsm["X_armed_re"], .uns["armed"]
    >>> model.get_counterfactual_expression(batch="batch_2")  # every cell as if in batch_2
    >>> query_model = model.adapt(query)  # random effects for the query's new batches
    """

    _module_cls = ArmedVAEModule
    _data_arguments = ("n_input", "n_batch", "n_labels")
    # The adversary keeps removing batch after 1,500 steps on data of Kang's size (8,684
    # cells: 25 -> 75 epochs, scIB Total 0.808 -> 0.819; benchmarks/results/rna_integration.md).
    _default_min_epochs = 75
    #: The 0.12 training: ``model.train(plan_kwargs=ArmedRNA.plan_defaults_before_0_13)``
    #: (with ``ArmedVAEModule.defaults_before_0_13``'s adversary, the 0.12 model).
    plan_defaults_before_0_13 = MappingProxyType({"adversary_lr": 1e-3})
    #: The 0.7-0.11 training: ``model.train(plan_kwargs=ArmedRNA.plan_defaults_before_0_12)``
    #: (with ``ArmedVAEModule.defaults_before_0_13``'s adversary, the 0.7-0.11 model).
    plan_defaults_before_0_12 = MappingProxyType(
        {**plan_defaults_before_0_13, "adversary_lr_end": None}
    )

    def __init__(
        self,
        adata: AnnData,
        mode: Mode = "mixed",
        likelihood: Likelihood = "nb",
        seed: int = 0,
        **module_kwargs: Any,
    ):
        check.check_anndata(adata)
        super().__init__(adata)
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        layer = self.registry_["setup_args"].get("layer")
        check.check_likelihood(matrix, likelihood, check.matrix_name(layer))
        data = {
            "n_input": self.summary_stats.n_vars,
            "n_batch": self.summary_stats.n_batch,
            "n_labels": self.summary_stats.n_labels if self._has_labels else 0,
        }
        module_kwargs = self._check_module_kwargs(module_kwargs)
        self._build_module(seed, data, {"mode": mode, "likelihood": likelihood, **module_kwargs})
        self._model_summary_string = (
            f"ArmedRNA (mode={mode}, likelihood={likelihood}): {data['n_input']} genes, "
            f"{data['n_batch']} batches, FE latent {self.module.n_latent}"
            + (f", RE latent {self.module.n_latent_re}" if self.module.has_random_encoder else "")
            + (f", {data['n_labels']} labels" if data["n_labels"] else "")
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    def _default_plan_kwargs(self) -> dict[str, Any]:
        # The mixed model: a slow adversary through the warm-up, then faster. scIB Total above
        # Harmony on Kang, CellBench and kang_thinned, 3 seeds; a constant 0.01 from the start
        # leaves the huge-effect simulation's batch in z_FE. mode="fixed" keeps a constant
        # rate: with the ramp its CellBench Total fell (0.759 against 0.781, 3 seeds).
        # Since 0.13 the ramp starts at 3e-4 (was 1e-3): the 256-unit adversary learns faster,
        # and from 1e-3 it left more of the huge-effect simulation's batch in z_FE (silhouette
        # 0.318 against 0.240; no adversary 0.359).
        # benchmarks/results/rna_integration.md ("v3": the constant rate, "v4": from 1e-3).
        if self.module.mode != "mixed":
            return {}
        return {"adversary_lr": 3e-4, "adversary_lr_end": 0.01}

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData for ARMED.

        Parameters
        ----------
        adata
            Cells x genes. Raw counts for the count likelihoods.
        layer
            Layer holding the data; ``None`` uses ``adata.X``.
        batch_key
            ``adata.obs`` column with the grouping modelled as a random effect (batch, donor,
            plate). Required, at least two levels.
        labels_key
            Optional ``adata.obs`` column with cell labels: adds an FE label head and a
            mixed-effects label head (see :meth:`predict`).

        All checks run before anything is written, so on error ``adata`` is unchanged.
        """
        setup_method_args = cls._get_setup_method_args(**locals())  # first: records the args
        check.check_anndata(adata)
        check.check_matrix(check.get_matrix(adata, layer), check.matrix_name(layer))
        field = LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False)
        cls._register(adata, field, batch_key, labels_key, setup_method_args, **kwargs)

    # ------------------------------------------------------------------ reading genes
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
        decoded = self.module.decode(self.module.encode_fe(x), design)[:, genes]
        if self.module.likelihood == "gaussian":
            return decoded.cpu().numpy()
        library = x.sum(-1, keepdim=True) if library_size == "observed" else library_size
        return (decoded * library).cpu().numpy()

    def _stream_expression(
        self, adata, indices, gene_list, library_size, batch_size, batch, observed: bool
    ) -> Iterator[tuple[slice, np.ndarray]]:
        if not (
            library_size == "observed"
            or (isinstance(library_size, int | float) and library_size > 0)
        ):
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
            values = check.check_finite_output(
                result.to_numpy(), "The expression", f"adata.layers[{layer_key!r}]"
            )
            (self.adata if adata is None else adata).layers[layer_key] = values
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

    # ------------------------------------------------------------------ new batches
    def adapt(
        self,
        query: AnnData,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-2,
        seed: int = 0,
        progress_bar: bool = True,
    ) -> ArmedRNA:
        """Fit random effects for the query's new batches, with every shared weight frozen.

        Returns a copy of the model that knows the new batches (the reference model is left
        as is). Each new batch's random effects start at the mixture of seen batches that the
        Z-predictor assigns to its cells, then the decoder's and the RE encoder's rows for the
        new batches are fitted to the query cells of those batches
        (:class:`~armed_bio.train.AdaptationTrainingPlan`). The label head's rows keep the
        soft-``Z`` start (the query has no labels to fit them). Works the same on every
        scvi-tools version (it does not use ``load_query_data``).

        Parameters
        ----------
        query
            AnnData with the training genes in the training order, raw data in the same layer
            as in training, and the batch column; cells of seen batches are allowed and left
            out of the fit.
        max_epochs
            Passes over the new batches' cells; default: about 400 optimizer steps, at most
            100 epochs.
        batch_size
            Minibatch size.
        lr
            Adam learning rate of the new random-effect rows.
        seed
            Seed for shuffling and posterior sampling.
        progress_bar
            Show a progress bar.

        Returns
        -------
        The adapted model; use it with ``query`` for latents, counterfactuals and predictions.
        """
        self._check_if_trained(warn=False)
        self._require_random_effects("Adapting to new batches")
        check.check_anndata(query, "query")
        check_genes(query, self.adata.var_names)
        setup = self.registry_["setup_args"]
        batch_key = setup["batch_key"]
        check.check_batch_key(query, batch_key, min_batches=1)
        matrix = check_query_matrix(query, setup.get("layer"), self.module.likelihood)
        check_arguments(
            {
                "batch_size": batch_size,
                "lr": lr,
                "seed": seed,
                **({} if max_epochs is None else {"max_epochs": max_epochs}),
            },
            "ArmedRNA.adapt",
        )
        codes, new_batches = batch_codes(
            query, batch_key, self.batch_categories_, np.arange(query.n_obs)
        )
        if not new_batches:
            raise ValueError(
                f"Every batch in query.obs[{batch_key!r}] was seen in training, so there is "
                "nothing to adapt: use the model directly on the query."
            )
        new_cells = np.flatnonzero(codes == UNSEEN)
        if max_epochs is None:
            steps_per_epoch = math.ceil(len(new_cells) / batch_size)
            max_epochs = min(
                MAX_ADAPT_EPOCHS, max(1, math.ceil(ADAPT_TARGET_STEPS / steps_per_epoch))
            )
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")

        n_old = self.module.n_batch
        values = query.obs[batch_key].to_numpy()
        new_codes = np.full(query.n_obs, UNSEEN, dtype=np.int64)
        for j, name in enumerate(new_batches):
            new_codes[values == name] = n_old + j
        adapted = copy.copy(self)
        adapted.module = module = copy.deepcopy(self.module)
        adapted.batch_categories_ = list(self.batch_categories_) + list(new_batches)
        module.add_batches(
            self._mean_soft_design(module, matrix, new_codes, n_old, len(new_batches))
        )
        minibatches = QueryMinibatches(matrix, new_cells, new_codes, batch_size, seed)
        losses = fit_new_batches(module, minibatches, n_old, max_epochs, lr, seed, progress_bar)
        adapted.adapt_params_ = {
            "new_batches": [str(b) for b in new_batches],
            "n_cells": int(len(new_cells)),
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "loss": losses,
        }
        n_seen = int(query.n_obs - len(new_cells))
        logger.info(
            f"Adapted to {len(new_batches)} new batches {list(new_batches)} from "
            f"{len(new_cells)} cells in {max_epochs} epochs (shared weights frozen)"
            + (f"; {n_seen} query cells of seen batches were not used." if n_seen else ".")
        )
        return adapted

    @staticmethod
    @torch.no_grad()
    def _mean_soft_design(module, matrix, codes: np.ndarray, n_old: int, n_new: int):
        """Mean calibrated soft ``Z`` of each new batch's cells: where its effects start."""
        module.eval()
        device = next(module.parameters()).device
        init = torch.zeros(n_new, n_old)
        for j in range(n_new):
            cells = np.flatnonzero(codes == n_old + j)
            total = torch.zeros(module.n_batch_reference)
            for _, x in iter_chunks(matrix, cells, 4096):
                total += module.batch_probabilities(x.to(device)).sum(0).cpu()
            init[j, : module.n_batch_reference] = total / len(cells)
        return init

    # ------------------------------------------------------------------ random effects
    def get_random_effects(self) -> pd.DataFrame:
        """Posterior mean and s.d. of every random effect, one row per batch x layer x unit.

        Layers are named by their place in the module (``decoder.output_offset``,
        ``decoder.films.0.gamma``, ``re_encoder.films.0.beta``, ``label_head.intercept``, ...);
        units are genes for the decoder's output scale/offset, labels for the label head's
        intercept and hidden-unit numbers otherwise.
        """
        self._require_random_effects("get_random_effects")
        labels = self._label_categories() if self.module.n_labels else []
        return random_effects_table(
            self.module, self.batch_categories_, list(self.adata.var_names), labels
        )

    def get_gene_batch_variance(self) -> pd.DataFrame:
        """Genes ranked by how much batches shift them.

        Per gene: variance across batches of the posterior mean of the output random offset
        (a per-batch log fold change) and scale, and the batches with the largest and
        smallest offset. Sorted by ``offset_variance``, most batch-affected first.
        """
        self._require_random_effects("get_gene_batch_variance")
        return gene_batch_variance(self.module, self.batch_categories_, list(self.adata.var_names))

    @classmethod
    def _check_saved_inputs(cls, adata: AnnData, saved_names: list[str]) -> None:
        if list(adata.var_names) != list(saved_names):
            raise ValueError(
                "adata.var_names differ from the genes the model was trained on. Subset and "
                "order them as in training: `adata = adata[:, model_var_names]`."
            )
