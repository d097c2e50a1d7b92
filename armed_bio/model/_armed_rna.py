"""``ArmedRNA``: the user-facing ARMED mixed-effects autoencoder for scRNA-seq counts."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import scvi
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField

from .. import _validation as check
from .._constants import MODES, Likelihood, Mode
from ..module import ArmedVAEModule
from ..train import ArmedTrainingPlan
from ._adapt import adapt_model
from ._base import ArmedModelBase
from ._expression import ArmedExpressionMixin
from ._random_effects_table import gene_batch_variance, random_effects_table

logger = logging.getLogger(__name__)


class ArmedRNA(ArmedExpressionMixin, ArmedModelBase):
    """ARMED mixed-effects autoencoder for single-cell RNA-seq counts.

    One joint model: a fixed-effects (FE) encoder made batch-invariant by an adversary, a
    random-effects (RE) encoder with Bayesian FiLM random effects, and a mixed-effects decoder
    whose hidden layers and per-gene output carry per-batch random effects (``Z = 0`` gives
    batch-free expression).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    mode
        ``"mixed"`` (full ARMED), ``"fixed"`` (adversarial FE autoencoder, scMEDAL-FE) or
        ``"random"`` (random effects only, no adversary, scMEDAL-RE).
    likelihood
        ``"nb"`` (default), ``"zinb"``, ``"poisson"`` on raw counts with library size, or
        ``"gaussian"`` (MSE) on log-normalised data.
    n_latent_fe, n_latent_re
        Sizes of the FE (batch-invariant) and RE (batch-specific) latents.
    n_hidden, n_layers, dropout_rate
        Network architecture.
    adversary_on
        ``"latent"`` or ``"all"`` encoder layers.
    adversary_weight
        ``lambda_g``: a number, or ``"auto"`` to scale it with the reconstruction loss.
    adversary_scale
        ``lambda_g`` per unit of per-cell reconstruction loss when ``adversary_weight="auto"``.
    adversary_objective
        ``"negative_ce"`` (``-lambda_g * CE``, the paper's form, default) or ``"confusion"``
        (push the adversary towards a uniform prediction; stronger mixing).
    fe_reconstruction_weight
        ``lambda_F``, weight of the FE-only (``Z = 0``) reconstruction. It asks ``z_FE`` to
        reconstruct counts *with* their batch effects, against the adversary, so it trades
        batch correction for a better-trained batch-free decode; 0.2 scored best on the shared
        sets (scIB Total 1.0 -> 0.2: Kang 0.787 -> 0.804, CellBench 0.773 -> 0.832).
    detach_fe_reconstruction
        The FE-only reconstruction trains the decoder but not the encoder (for very strong,
        uniform batch effects; off by default, see the module docs).
    re_batch_weight
        Weight of the cooperative batch head on ``z_RE``.
    hidden_prior_sd, output_prior_sd
        Prior s.d. of the hidden FiLM and per-gene output random effects.
    classification_weight
        Weight of the label heads' cross-entropy (only with ``labels_key``).
    conditional_adversary
        With ``labels_key``, the adversary is told each cell's label and must find the batch
        beyond it: ``z_FE`` is made independent of the batch *given* the cell type, so a cell
        type missing from some batches is not erased with the batch. Off: the adversary sees
        ``z_FE`` alone, as without labels.
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
    _training_plan_cls = ArmedTrainingPlan

    def __init__(
        self,
        adata: AnnData,
        mode: Mode = "mixed",
        likelihood: Likelihood = "nb",
        n_latent_fe: int = 10,
        n_latent_re: int = 5,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        adversary_on: str = "latent",
        adversary_weight: float | str = "auto",
        adversary_scale: float = 0.01,
        adversary_objective: str = "negative_ce",
        fe_reconstruction_weight: float = 0.2,
        detach_fe_reconstruction: bool = False,
        re_batch_weight: float = 1.0,
        hidden_prior_sd: float = 0.25,
        output_prior_sd: float = 1.0,
        classification_weight: float = 1.0,
        conditional_adversary: bool = True,
        seed: int = 0,
    ):
        check.check_anndata(adata)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        super().__init__(adata)
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        layer = self.registry_["setup_args"].get("layer")
        check.check_likelihood(matrix, likelihood, check.matrix_name(layer))
        scvi.settings.seed = seed
        has_labels = self.registry_["setup_args"].get("labels_key") is not None
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=self.summary_stats.n_batch,
            mode=mode,
            likelihood=likelihood,
            n_latent_fe=n_latent_fe,
            n_latent_re=n_latent_re,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            adversary_on=adversary_on,
            adversary_weight=adversary_weight,
            adversary_scale=adversary_scale,
            adversary_objective=adversary_objective,
            fe_reconstruction_weight=fe_reconstruction_weight,
            detach_fe_reconstruction=detach_fe_reconstruction,
            re_batch_weight=re_batch_weight,
            hidden_prior_sd=hidden_prior_sd,
            output_prior_sd=output_prior_sd,
            n_labels=self.summary_stats.n_labels if has_labels else 0,
            classification_weight=classification_weight,
            conditional_adversary=conditional_adversary,
        )
        self._fit_batch_given_label()
        batch_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        # Batches with random effects, in code order; adapt() appends new ones.
        self.batch_categories_: list = list(batch_state.categorical_mapping)
        self._model_summary_string = (
            f"ArmedRNA (mode={mode}, likelihood={likelihood}): {self.summary_stats.n_vars} genes, "
            f"{self.summary_stats.n_batch} batches, FE latent {n_latent_fe}"
            + (f", RE latent {n_latent_re}" if self.module.has_random_encoder else "")
            + (f", {self.module.n_labels} labels" if has_labels else "")
        )
        self.train_params_: dict[str, Any] = {}
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
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
        # When loading a model, a subset of the training data may hold a single batch.
        loading = "source_registry" in kwargs
        check.check_batch_key(adata, batch_key, min_batches=1 if loading else 2)
        check.check_labels_key(adata, labels_key)
        check.check_matrix(check.get_matrix(adata, layer), check.matrix_name(layer))
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

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
        new batches are fitted to the query cells of those batches. The label head's rows keep
        the soft-``Z`` start (the query has no labels to fit them). Works the same on every
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
        return adapt_model(self, query, max_epochs, batch_size, lr, seed, progress_bar)

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
