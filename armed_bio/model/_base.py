"""What every ARMED model shares: training, inference on any query, records and files.

Every inference method reads cells in chunks (each model's ``_query_chunks`` checks and reads
its data: genes for ``ArmedRNA``, images for the image models), works on cells of batches the
model never saw (see :mod:`armed_bio.model._query`) and logs which route the cells took. None of
them writes to the AnnData unless asked.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from .. import _validation as check
from .._arguments import check_arguments, check_plan_kwargs, check_split
from .._constants import FE_OBSM_KEY, RE_OBSM_KEY, UNS_KEY, LatentKind
from .._malloc import heap_kept_for_training, large_blocks_mapped, release_freed_memory
from ..train import ArmedTrainingPlan, fit_temperature
from ..train._checkpoint import CHECKPOINT_FILE, check_same_run, read_checkpoint_run
from . import _save_load
from ._query import (
    DEFAULT_ENTROPY_THRESHOLD,
    UNSEEN,
    RouteCounts,
    batch_codes,
    check_indices,
    check_threshold,
    route_design,
)

logger = logging.getLogger(__name__)

# Optimizer steps a default RNA run aims for (see shared/design/findings.md), and the cap.
DEFAULT_TARGET_STEPS = 1500
MAX_DEFAULT_EPOCHS = 500
DEFAULT_INFERENCE_BATCH_SIZE = 1024
# Inference chunks between returns of freed heap pages to the OS (`_malloc`).
TRIM_EVERY_CHUNKS = 8
# Module arguments renamed for one vocabulary across models: old name -> new name.
RENAMED_ARGUMENTS = {"n_latent_fe": "n_latent", "prior_sd": "hidden_prior_sd"}


# scVI's default schedule, 400 epochs at 20,000 cells and proportionally fewer above: the
# cell-passes that taper the epoch floor on large data.
TAPER_CELL_PASSES = 20_000 * 400


def default_max_epochs(
    n_obs: int,
    batch_size: int,
    train_size: float = 0.9,
    target_steps: int = DEFAULT_TARGET_STEPS,
    min_epochs: int = 0,
) -> int:
    """Default epochs: about ``target_steps`` optimizer steps, and at least ``min_epochs``.

    The epoch floor tapers on large data as scVI's does (``20,000 * 400 / n_obs`` epochs), so
    a million cells get 8 passes, not ``min_epochs``. Capped at :data:`MAX_DEFAULT_EPOCHS`.
    """
    steps_per_epoch = max(1, math.ceil(n_obs * train_size / batch_size))
    for_steps = math.ceil(target_steps / steps_per_epoch)
    floor = min(min_epochs, round(TAPER_CELL_PASSES / max(n_obs, 1)))
    return int(min(MAX_DEFAULT_EPOCHS, max(1, for_steps, floor)))


class ArmedModelBase(UnsupervisedTrainingMixin, BaseModelClass):
    """Base of the user-facing ARMED models (not used directly).

    Subclasses define ``setup_anndata`` and call :meth:`_build_module` from ``__init__``; they
    implement ``_query_chunks`` (reading their data for inference), ``_saved_names`` and
    ``_check_saved_inputs`` (what must match when a saved model is loaded onto an AnnData).
    """

    _training_plan_cls = ArmedTrainingPlan
    _default_target_steps: int = DEFAULT_TARGET_STEPS
    #: Fewest default epochs (tapered on large data; see :func:`default_max_epochs`).
    _default_min_epochs: int = 0
    # Train inside `heap_kept_for_training` (the image models; see `_malloc`).
    _keep_heap_in_training: bool = False
    #: Module arguments set from the registered data, never by the user.
    _data_arguments: tuple[str, ...] = ("n_batch", "n_labels")

    #: Normalised batch entropy above which a cell of an unseen batch gets ``Z = 0`` instead of
    #: the Z-predictor's soft ``Z``; see :mod:`armed_bio.model._query`. Set per instance.
    entropy_threshold: float = DEFAULT_ENTROPY_THRESHOLD

    def _check_module_kwargs(self, module_kwargs: dict) -> dict:
        """The user's module arguments under their current names, checked.

        Renamed arguments are accepted with a ``FutureWarning``; unknown or data-derived names
        raise a ``TypeError`` naming the fix.
        """
        known = set(inspect.signature(self._module_cls.__init__).parameters) - {"self"}
        kwargs = dict(module_kwargs)
        for old, new in RENAMED_ARGUMENTS.items():
            if old in kwargs and new in known:
                warnings.warn(
                    f"{type(self).__name__}({old}=...) is deprecated; use {new}=.",
                    FutureWarning,
                    stacklevel=3,
                )
                kwargs[new] = kwargs.pop(old)
        derived = set(self._data_arguments) & set(kwargs)
        if derived:
            raise TypeError(
                f"{sorted(derived)} are set from the registered AnnData; do not pass them to "
                f"{type(self).__name__}."
            )
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown arguments {sorted(unknown)}; its arguments "
                f"are {sorted(known - set(self._data_arguments))}."
            )
        return kwargs

    def _build_module(self, seed: int, data_arguments: dict, module_kwargs: dict) -> None:
        """Build ``self.module`` from the data's sizes and the (checked) module arguments.

        Also fits ``p(batch | label)`` and records the batch categories and an empty training
        record.
        """
        scvi.settings.seed = seed
        self.module = self._module_cls(**data_arguments, **module_kwargs)
        # Every module argument with the value it took, defaults included, saved with the
        # model: a later release's new defaults must not change a saved model when it loads.
        self.module_arguments_: dict[str, Any] = {
            **{
                name: p.default
                for name, p in inspect.signature(self._module_cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty and name not in data_arguments
            },
            **module_kwargs,
        }
        self._fit_batch_given_label()
        batch_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        # Batches with random effects, in code order; adapt() appends new ones.
        self.batch_categories_: list = list(batch_state.categorical_mapping)
        self.train_params_: dict[str, Any] = {}

    @classmethod
    def _register(
        cls,
        adata: AnnData,
        data_field,
        batch_key: str | None,
        labels_key: str | None,
        setup_method_args: dict,
        **kwargs,
    ) -> None:
        """Check the batch and label columns, then register ``data_field`` with them.

        The data itself is checked by the caller first; nothing is written before every check
        has passed, so on error ``adata`` is unchanged.
        """
        # When loading a model, a subset of the training data may hold a single batch.
        loading = "source_registry" in kwargs
        check.check_unique_names(adata)
        check.check_batch_key(adata, batch_key, min_batches=1 if loading else 2)
        check.check_labels_key(adata, labels_key)
        fields = [
            data_field,
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    @property
    def _has_labels(self) -> bool:
        return self.registry_["setup_args"].get("labels_key") is not None

    @property
    def module_params(self) -> dict[str, Any]:
        """Every argument the model was built with (its own and its module's)."""
        return _saved_arguments(self.init_params_)

    def _saved_names(self) -> list[str]:
        return list(self.adata.var_names)

    @classmethod
    def _check_saved_inputs(cls, adata: AnnData, saved_names: list[str]) -> None:
        raise NotImplementedError

    def _fit_batch_given_label(self) -> None:
        """Fit ``p(batch | label)`` of the training cells into the module's buffer.

        For the label-conditional adversary; saved with the weights. No-op without labels.
        """
        module = self.module
        if not module.conditional_adversary:
            return
        batch = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY))
        label = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY))
        n_labels, n_batch = module.batch_given_label.shape
        counts = np.zeros((n_labels, n_batch))
        np.add.at(counts, (label.ravel().astype(int), batch.ravel().astype(int)), 1.0)
        prior = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
        prior[counts.sum(1) == 0] = 1.0 / n_batch
        module.batch_given_label.copy_(torch.as_tensor(prior, dtype=torch.float32))

    # ------------------------------------------------------------------ training
    def _default_plan_kwargs(self) -> dict[str, Any]:
        """Training-plan arguments this model uses unless ``train(plan_kwargs=...)`` names them."""
        return {}

    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        seed: int = 0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_epochs: int = 1,
        resume: bool = False,
        **trainer_kwargs,
    ) -> None:
        """Train with alternating adversary and main updates.

        Parameters
        ----------
        max_epochs
            Number of passes over the training cells. ``None`` picks enough epochs for about
            ``_default_target_steps`` optimizer steps (1,500 for ``ArmedRNA``: what removing
            strong batch effects needed; 1,000 for ``ArmedImageClassifier``, 500 for
            ``ArmedImage``), capped at 500. ``ArmedRNA`` also makes at least 75 passes,
            fewer on large data as scVI's default does (``8e6 / n_obs``: 8 at a million
            cells).
        batch_size
            Minibatch size.
        seed
            Seed for the train/validation split, shuffling and random-effect sampling.
        accelerator, devices
            Lightning device arguments (``accelerator="gpu", devices=N``; for several devices
            pass ``strategy="ddp_find_unused_parameters_true"``).
        train_size, validation_size
            Fractions of cells for training and validation (default 0.9 / 0.1).
        early_stopping
            Stop when ``elbo_validation`` (logged every epoch) stops improving; tune with
            ``early_stopping_patience`` and ``early_stopping_min_delta``.
        plan_kwargs
            Passed to :class:`~armed_bio.train.ArmedTrainingPlan` (``lr``, ``adversary_lr``,
            ``warmup_fraction``, ...). They override the model's defaults: the mixed
            ``ArmedRNA`` holds the adversary's learning rate at ``adversary_lr=3e-4`` through
            its warm-up and then ramps it to ``adversary_lr_end=0.01``
            (``plan_kwargs={"adversary_lr_end": None}`` keeps it constant).
        datasplitter_kwargs
            Passed to scvi's ``DataSplitter``.
        checkpoint_dir
            Folder for a resumable checkpoint (``last.ckpt``, replaced atomically), written
            every ``checkpoint_every_n_epochs`` epochs and after the last one.
        checkpoint_every_n_epochs
            Epochs between checkpoints.
        resume
            Continue the run checkpointed in ``checkpoint_dir`` (weights, both optimizers,
            step counters, history and random generators), so that it ends as an
            uninterrupted run with the same arguments would. Call it with the same data,
            model and arguments as the interrupted run. Without a checkpoint there yet, the
            run starts from the beginning (so a job script may always pass ``resume=True``).
        **trainer_kwargs
            Passed to scvi's ``Trainer`` / Lightning.
        """
        check_arguments(
            {
                "batch_size": batch_size,
                "seed": seed,
                "train_size": train_size,
                "validation_size": validation_size,
                "checkpoint_every_n_epochs": checkpoint_every_n_epochs,
                **({} if max_epochs is None else {"max_epochs": max_epochs}),
            },
            f"{type(self).__name__}.train",
        )
        check_split(train_size, validation_size)
        check_plan_kwargs(self._training_plan_cls, plan_kwargs or {})
        if self.module.n_batch != self.module.n_batch_reference:
            raise RuntimeError(
                "This model was adapted to new batches with adapt(); it is for inference on the "
                "query. Train the reference model instead, then adapt it again."
            )
        if max_epochs is None:
            max_epochs = default_max_epochs(
                self.adata.n_obs,
                batch_size,
                train_size or 0.9,
                self._default_target_steps,
                self._default_min_epochs,
            )
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
        # A checkpoint compares the user's train() arguments on resume; train_params_ records
        # the run's plan arguments (the model's defaults, then the user's).
        user_plan_kwargs = dict(plan_kwargs or {})
        run_plan_kwargs = {**self._default_plan_kwargs(), **user_plan_kwargs}
        plan_kwargs = dict(run_plan_kwargs)
        if checkpoint_dir is not None:
            plan_kwargs.update(
                self._checkpointing(
                    Path(checkpoint_dir),
                    checkpoint_every_n_epochs,
                    resume,
                    {
                        "max_epochs": max_epochs,
                        "batch_size": batch_size,
                        "seed": seed,
                        "train_size": train_size,
                        "validation_size": validation_size,
                        "plan_kwargs": user_plan_kwargs,
                    },
                    trainer_kwargs,
                )
            )
        elif resume:
            raise ValueError("resume=True needs the checkpoint_dir of the interrupted run.")
        scvi.settings.seed = seed
        self.train_params_ = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "seed": seed,
            "train_size": train_size if train_size is not None else 0.9,
            "early_stopping": early_stopping,
            "plan_kwargs": run_plan_kwargs,
        }
        with heap_kept_for_training() if self._keep_heap_in_training else nullcontext():
            super().train(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                datasplitter_kwargs=datasplitter_kwargs,
                **trainer_kwargs,
            )
        self.train_params_["epochs_trained"] = (
            len(self.history_["train_loss"])
            if (self.history_ and "train_loss" in self.history_)
            else max_epochs
        )
        if self.module.has_random_effects:
            held_out = self.validation_indices
            if held_out is not None and len(held_out):
                self.train_params_["z_temperature"] = self.calibrate_batch_predictor(
                    indices=np.sort(held_out)
                )
            else:
                logger.warning(
                    "No held-out cells (train_size=1.0), so the Z-predictor is uncalibrated "
                    "(temperature 1). Call model.calibrate_batch_predictor(adata_held_out)."
                )

    def _checkpointing(
        self,
        folder: Path,
        every: int,
        resume: bool,
        arguments: dict[str, Any],
        trainer_kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        """Plan arguments that write checkpoints to ``folder``; set ``ckpt_path`` to resume.

        The run's record (data shape, model and ``train`` arguments) goes into each
        checkpoint; resuming checks it, so a checkpoint is never continued with other settings.
        """
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"checkpoint_dir {folder} is a file; pass a folder.")
        run = {
            "model": type(self).__name__,
            "n_obs": int(self.adata.n_obs),
            "n_vars": int(self.adata.n_vars),
            "module_arguments": self.module_arguments_,
            **arguments,
        }
        run = json.loads(json.dumps(run, sort_keys=True, default=str))
        checkpoint = folder / CHECKPOINT_FILE
        if checkpoint.exists():
            if not resume:
                raise FileExistsError(
                    f"{checkpoint} holds a checkpoint of an earlier run. Pass resume=True to "
                    "continue it, or delete it (or pass another checkpoint_dir) to start over."
                )
            check_same_run(read_checkpoint_run(checkpoint), run, checkpoint)
            trainer_kwargs["ckpt_path"] = str(checkpoint)
            logger.info(f"Resuming the run checkpointed in {checkpoint}.")
        elif resume:
            logger.warning(f"No checkpoint in {folder} yet: training from the start.")
        return {
            "checkpoint_dir": str(folder),
            "checkpoint_every_n_epochs": every,
            "checkpoint_run": run,
        }

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
        check_arguments({"batch_size": batch_size}, type(self).__name__)
        chunks = self._query_chunks(adata, positions, batch_size)  # validates before yielding
        codes, unseen = batch_codes(adata, setup["batch_key"], self.batch_categories_, positions)
        threshold = check_threshold(self.entropy_threshold)
        self.module.eval()
        total = RouteCounts(unseen_batches=unseen)
        # No enumerate: its reused result tuple would keep the last chunk alive.
        n_read = 0
        for part, x in chunks:
            n_read += 1
            x = x.to(self.device)
            design, counts = route_design(self.module, x, codes[part], threshold)
            total.add(counts)
            yield part, x, design, codes[part]
            # Drop this chunk before the next is read (allocating each chunk while the last
            # was still held grew the heap by 0.7 GiB over a 1M-cell calibration), and every
            # few chunks hand the heap's free pages back (a trim costs a few ms).
            del x, design
            if n_read % TRIM_EVERY_CHUNKS == 0:
                release_freed_memory()
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
        what = "z_FE of" if kind == "fe" else "z_RE of"
        parts = []
        for _, x, design, _ in self._cells(adata, indices, batch_size, what, kind == "re"):
            z = self.module.encode_fe(x) if kind == "fe" else self.module.encode_re(x, design)
            parts.append(z.cpu())
        return torch.cat(parts).numpy()

    # ------------------------------------------------------------------ batch prediction
    def _batch_logits(self, adata, indices, batch_size) -> tuple[torch.Tensor, np.ndarray]:
        self._require_random_effects("The Z-predictor")
        logits, codes = [], []
        for _, x, _, batch in self._cells(adata, indices, batch_size, what=""):
            logits.append(self.module.batch_logits(x).cpu())
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
        # Its chunks mapped on their own: freed between the kept logits, they fragmented the
        # heap (up to 0.05 GiB on a 1M-cell model). Not in every pass: it costs page faults
        # (100k cells' latents 1.4 -> 2.1 s), and calibration runs once after training.
        with large_blocks_mapped():
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
        logger.info(
            f"Z-predictor temperature fitted on {len(codes)} held-out cells: {temperature:.3g}."
        )
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
        head: Literal["fe", "me"] = "fe",
        soft: bool = False,
        batch_size: int | None = None,
        kind: Literal["fe", "me"] | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Predict cell labels with the FE head (``z_FE`` only) or the mixed-effects head.

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the training AnnData. Its label column,
            if any, is never read (it may hold categories the model has not seen).
        indices
            Cell positions (or a boolean mask); default all.
        head
            ``"fe"``: the batch-invariant head. ``"me"``: FE logit plus the batch's random
            slopes and intercept; cells of unseen batches use the soft-``Z`` route.
        soft
            Return class probabilities instead of labels.
        batch_size
            Cells per chunk.
        kind
            Deprecated name of ``head`` (``kind`` names the latent elsewhere).

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
        if kind is not None:
            warnings.warn(
                "predict(kind=...) is deprecated; use head=.", FutureWarning, stacklevel=2
            )
            head = kind
        if head not in ("fe", "me"):
            raise ValueError(f"head must be 'fe' or 'me', got {head!r}.")
        if head == "me":
            self._require_random_effects("The mixed-effects head")
        what = f"Labels from the {head.upper()} head for"
        proba = []
        for _, x, design, _ in self._cells(adata, indices, batch_size, what, head == "me"):
            fe, me = self.module.classify(self.module.encode_fe(x), design)
            proba.append(torch.softmax(fe if head == "fe" else me, dim=-1).cpu())
        proba = torch.cat(proba).numpy()
        categories = self._label_categories()
        if soft:
            return pd.DataFrame(proba, index=self._obs_names(adata, indices), columns=categories)
        return np.asarray(categories, dtype=object)[proba.argmax(-1)]

    # ------------------------------------------------------------------ outputs
    def _check_kind(self, kind: str) -> None:
        if kind not in ("fe", "re"):
            raise ValueError(f"kind must be 'fe' or 're', got {kind!r}.")
        if kind == "re" and not self.module.has_random_encoder:
            raise ValueError(
                f"This {type(self).__name__} (mode={self.module.mode!r}) has no random-effects "
                "encoder, so there is no RE latent. Use kind='fe'."
            )

    def write_to_adata(
        self,
        adata: AnnData | None = None,
        fe_key: str = FE_OBSM_KEY,
        re_key: str = RE_OBSM_KEY,
        uns_key: str = UNS_KEY,
    ) -> AnnData:
        """Write the FE/RE latents to ``.obsm`` and a record of the run to ``.uns[uns_key]``.

        Parameters
        ----------
        adata
            AnnData to write to (default: the training AnnData).
        fe_key, re_key
            ``.obsm`` keys of the fixed- and random-effects latents.
        uns_key
            ``.uns`` key of the run record (set-up, parameters, training, the obsm keys).

        Returns
        -------
        The AnnData written to.
        """
        adata = self.adata if adata is None else adata
        # Every latent is computed and checked before anything is written.
        latents = {fe_key: self.get_latent_representation(adata, kind="fe")}
        obsm_keys = {"fe": fe_key}
        if self.module.has_random_encoder:
            latents[re_key] = self.get_latent_representation(adata, kind="re")
            obsm_keys["re"] = re_key
        for key, values in latents.items():
            check.check_finite_output(values, "The latent", f"adata.obsm[{key!r}]")
        adata.obsm.update(latents)
        adata.uns[uns_key] = self._uns_record(obsm_keys)
        return adata

    def _uns_record(self, obsm_keys: dict[str, str]) -> dict[str, Any]:
        return self.run_record(obsm_keys)

    def run_record(self, obsm_keys: dict[str, str] | None = None) -> dict[str, Any]:
        """A JSON/h5ad-friendly record of the model set-up, parameters and training."""
        from .. import __version__

        setup = self.registry_["setup_args"]
        batch_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        record = {
            "model": type(self).__name__,
            "armed_bio_version": __version__,
            "scvi_tools_version": scvi.__version__,
            "setup": {k: v for k, v in setup.items()},
            "batch_categories": [str(c) for c in batch_state.categorical_mapping],
            "params": self.module_params,
            "train": dict(self.train_params_),
            "adversary_weight_final": float(self.module.current_adversary_weight()),
            "obsm_keys": obsm_keys or {},
        }
        return _h5ad_safe(record)

    # ------------------------------------------------------------------ persistence
    def save(
        self,
        dir_path: str | os.PathLike,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model (weights as tensors only, the rest as JSON) to ``dir_path``.

        Parameters
        ----------
        dir_path
            Directory to write; created if missing.
        overwrite
            Replace a model saved there before. The save is atomic: it writes a temporary
            folder beside ``dir_path`` and renames it into place, so an interrupted save
            leaves the previous model intact. A folder holding other files is never replaced.
        save_anndata
            Also write the training AnnData as ``adata.h5ad``.
        """
        state = self.module.state_dict()
        # Parameters only: some buffers are NaN by design until set (a running scale).
        bad = [k for k, p in self.module.named_parameters() if not p.isfinite().all()]
        if bad:
            raise FloatingPointError(
                f"The model's weights {bad[:5]} are not finite (a diverged training run), so it "
                f"was not saved to {dir_path}. Retrain with a lower learning rate, e.g. "
                "`train(plan_kwargs={'lr': 1e-4})`."
            )
        attrs = {name: value for name, value in self._get_user_attributes() if name.endswith("_")}

        def write_adata(folder) -> None:
            self.adata.write_h5ad(folder / _save_load.ADATA_FILE, **anndata_write_kwargs)

        _save_load.save_model(
            state,
            self._saved_names(),
            attrs,
            dir_path,
            overwrite,
            write_more=write_adata if save_anndata else None,
        )

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: AnnData | None = None) -> ArmedModelBase:
        """Load a model saved with :meth:`save`, without unpickling anything.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData with the training genes in the same order; default: the ``adata.h5ad``
            saved beside the model.
        """
        state, var_names, attrs = _save_load.load_model_files(dir_path)
        registry = attrs.pop("registry_")
        if registry.get("model_name") != cls.__name__:
            raise ValueError(
                f"{dir_path} holds a {registry.get('model_name')} model, not {cls.__name__}. "
                f"Load it with `armed_bio.model.{registry.get('model_name')}.load(...)`."
            )
        if adata is None:
            saved = os.path.join(dir_path, _save_load.ADATA_FILE)
            if not os.path.exists(saved):
                raise ValueError(
                    f"No AnnData given and none saved in {dir_path}. Pass `adata=` or save "
                    "with save_anndata=True."
                )
            import anndata

            adata = anndata.read_h5ad(saved)
        check.check_anndata(adata)
        cls._check_saved_inputs(adata, var_names)
        cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        arguments = _saved_arguments(attrs.pop("init_params_"))
        # Files from before 0.3.0 hold only the arguments given; the rest took the defaults of
        # their release, which the module class keeps.
        saved = attrs.pop("module_arguments_", None)
        if saved is None:
            saved = cls._module_cls.defaults_before_0_3
        saved = {**cls._module_cls.added_arguments, **saved}
        model = cls(adata, **{**saved, **arguments})
        for name, value in attrs.items():
            setattr(model, name, value)
        n_adapted = len(model.batch_categories_) - model.module.n_batch
        if n_adapted > 0:  # an adapted model: make room for its extra batches' rows
            model.module.add_batches(torch.zeros(n_adapted, model.module.n_batch))
        model.module.load_state_dict(state)
        model.module.eval()
        return model


def _saved_arguments(init_params: dict) -> dict[str, Any]:
    """The constructor arguments of a saved model, under their current names.

    Files saved before the module arguments were renamed (0.1.0) load without a warning.
    """
    params = dict(init_params["non_kwargs"])
    for group in init_params.get("kwargs", {}).values():
        params.update(group)
    return {RENAMED_ARGUMENTS.get(k, k): v for k, v in params.items()}


def _h5ad_safe(obj: Any) -> Any:
    """Make a nested record writable to h5ad (no None, no tuples, plain scalars)."""
    if isinstance(obj, dict):
        return {str(k): _h5ad_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_h5ad_safe(v) for v in obj]
    if obj is None:
        return "None"
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
