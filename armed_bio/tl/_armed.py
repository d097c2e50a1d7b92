"""Scanpy-style one-liner that fits ARMED and writes its latents into the AnnData."""

from __future__ import annotations

import inspect
from typing import Any

from anndata import AnnData

from .._arguments import check_arguments, check_plan_kwargs
from .._validation import check_anndata, check_likelihood, get_matrix, matrix_name
from ..model import ArmedRNA
from ..model._base import RENAMED_ARGUMENTS
from ..module import ArmedVAEModule

# Keyword arguments that go to the model (its own and its module's); the rest go to train().
_MODEL_ARGS = (
    set(inspect.signature(ArmedRNA.__init__).parameters)
    | set(inspect.signature(ArmedVAEModule.__init__).parameters)
    | set(RENAMED_ARGUMENTS)
) - {"self", "adata", "module_kwargs", *ArmedRNA._data_arguments}


def armed(
    adata: AnnData,
    batch_key: str,
    layer: str | None = None,
    labels_key: str | None = None,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> ArmedRNA:
    """Fit :class:`~armed_bio.model.ArmedRNA` and write ``X_armed_fe``/``X_armed_re``.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``).
    batch_key
        ``adata.obs`` column modelled as a random effect.
    layer
        Layer with the counts; ``None`` uses ``.X``.
    labels_key
        Optional ``adata.obs`` column of cell labels.
    seed
        Seed for initialisation and training.
    **kwargs
        Model arguments (``mode``, ``likelihood``, ``n_latent``, ...) and training
        arguments (``max_epochs``, ``batch_size``, ``accelerator``, ...), told apart by name.

    Returns
    -------
    The trained model. ``adata`` gains ``.obsm["X_armed_fe"]``, ``.obsm["X_armed_re"]``
    (when the mode has random effects) and ``.uns["armed"]``.
    """
    check_anndata(adata)
    model_kwargs = {k: v for k, v in kwargs.items() if k in _MODEL_ARGS}
    train_kwargs = {k: v for k, v in kwargs.items() if k not in _MODEL_ARGS}
    # Every numeric argument is checked before setup_anndata registers anything in `adata`.
    check_arguments({"seed": seed, **kwargs}, "armed")
    if "plan_kwargs" in train_kwargs:
        check_plan_kwargs(ArmedRNA._training_plan_cls, train_kwargs["plan_kwargs"] or {})
    # Check the likelihood before setup_anndata registers anything in `adata`.
    likelihood = model_kwargs.get("likelihood", "nb")
    check_likelihood(get_matrix(adata, layer), likelihood, matrix_name(layer))
    ArmedRNA.setup_anndata(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)
    model = ArmedRNA(adata, seed=seed, **model_kwargs)
    model.train(seed=seed, **train_kwargs)
    model.write_to_adata(adata)
    return model
