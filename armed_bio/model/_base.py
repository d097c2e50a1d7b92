"""What every ARMED model shares: training, the run record, saving and loading."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from .. import _validation as check
from .._constants import FE_OBSM_KEY, RE_OBSM_KEY, UNS_KEY
from . import _save_load
from ._inference import ArmedInferenceMixin

logger = logging.getLogger(__name__)

# Optimizer steps a default RNA run aims for: fewer than ~800 under-corrected strong batch
# effects in the prototype, 1,000-1,500 were enough (shared/design/findings.md).
DEFAULT_TARGET_STEPS = 1500
MAX_DEFAULT_EPOCHS = 500


def default_max_epochs(
    n_obs: int, batch_size: int, train_size: float = 0.9, target_steps: int = DEFAULT_TARGET_STEPS
) -> int:
    """Epochs giving about ``target_steps`` optimizer steps (at least one epoch)."""
    steps_per_epoch = max(1, math.ceil(n_obs * train_size / batch_size))
    return int(min(MAX_DEFAULT_EPOCHS, max(1, math.ceil(target_steps / steps_per_epoch))))


class ArmedModelBase(ArmedInferenceMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Base of the user-facing ARMED models (not used directly).

    Subclasses define ``setup_anndata``, build ``self.module`` and set ``batch_categories_``,
    ``train_params_`` and ``init_params_``; they implement ``_query_chunks`` (reading their
    data for inference), ``_saved_names`` and ``_check_saved_inputs`` (what must match when a
    saved model is loaded onto an AnnData).
    """

    _default_target_steps: int = DEFAULT_TARGET_STEPS

    def _saved_names(self) -> list[str]:
        return list(self.adata.var_names)

    @classmethod
    def _check_saved_inputs(cls, adata: AnnData, saved_names: list[str]) -> None:
        raise NotImplementedError

    def _fit_batch_given_label(self) -> None:
        """``p(batch | label)`` of the training cells into the module's buffer (for the
        label-conditional adversary; saved with the weights). No-op without labels."""
        module = self.module
        if not getattr(module, "conditional_adversary", False):
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
        **trainer_kwargs,
    ) -> None:
        """Train with alternating adversary and main updates.

        Parameters
        ----------
        max_epochs
            Number of passes over the training cells. ``None`` picks enough epochs for about
            ``_default_target_steps`` optimizer steps (1,500 for ``ArmedRNA``: what removing
            strong batch effects needed), capped at 500.
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
            ``warmup_fraction``, ...).
        datasplitter_kwargs
            Passed to scvi's ``DataSplitter``.
        **trainer_kwargs
            Passed to scvi's ``Trainer`` / Lightning.
        """
        if self.module.n_batch != self.module.n_batch_reference:
            raise RuntimeError(
                "This model was adapted to new batches with adapt(); it is for inference on the "
                "query. Train the reference model instead, then adapt it again."
            )
        if max_epochs is None:
            max_epochs = default_max_epochs(
                self.adata.n_obs, batch_size, train_size or 0.9, self._default_target_steps
            )
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
        scvi.settings.seed = seed
        self.train_params_ = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "seed": seed,
            "train_size": train_size if train_size is not None else 0.9,
            "early_stopping": early_stopping,
            "plan_kwargs": dict(plan_kwargs or {}),
        }
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
        self.train_params_["epochs_trained"] = len(self.history_["train_loss"]) if (
            self.history_ and "train_loss" in self.history_
        ) else max_epochs
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

    # ------------------------------------------------------------------ outputs
    def _check_kind(self, kind: str) -> None:
        if kind not in ("fe", "re"):
            raise ValueError(f"kind must be 'fe' or 're', got {kind!r}.")
        if kind == "re" and not getattr(self.module, "has_random_encoder", False):
            raise ValueError(
                f"This {type(self).__name__} (mode={self.module.mode!r}) has no random-effects "
                "encoder, so there is no RE latent. Use kind='fe'."
            )

    def write_to_adata(
        self,
        adata: AnnData | None = None,
        fe_key: str = FE_OBSM_KEY,
        re_key: str = RE_OBSM_KEY,
    ) -> AnnData:
        """Write the FE/RE latents to ``.obsm`` and a record of the run to ``.uns["armed"]``.

        Returns the AnnData written to (the training AnnData by default).
        """
        adata = self.adata if adata is None else adata
        adata.obsm[fe_key] = self.get_latent_representation(adata, kind="fe")
        obsm_keys = {"fe": fe_key}
        if getattr(self.module, "has_random_encoder", False):
            adata.obsm[re_key] = self.get_latent_representation(adata, kind="re")
            obsm_keys["re"] = re_key
        adata.uns[UNS_KEY] = self._uns_record(obsm_keys)
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
            "params": dict(self.init_params_["non_kwargs"]),
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
            Allow writing into a non-empty directory.
        save_anndata
            Also write the training AnnData as ``adata.h5ad``.
        """
        attrs = {name: value for name, value in self._get_user_attributes() if name.endswith("_")}
        path = _save_load.save_model(
            self.module.state_dict(), self._saved_names(), attrs, dir_path, overwrite
        )
        if save_anndata:
            self.adata.write_h5ad(path / _save_load.ADATA_FILE, **anndata_write_kwargs)

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
                f"{dir_path} holds a {registry.get('model_name')} model, not {cls.__name__}."
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
        init = attrs.pop("init_params_")
        kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
        model = cls(adata, **init["non_kwargs"], **kwargs)
        for name, value in attrs.items():
            setattr(model, name, value)
        n_adapted = len(model.batch_categories_) - model.module.n_batch
        if n_adapted > 0:  # an adapted model: make room for its extra batches' rows
            model.module.add_clusters(torch.zeros(n_adapted, model.module.n_batch))
        model.module.load_state_dict(state)
        model.module.eval()
        return model



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
