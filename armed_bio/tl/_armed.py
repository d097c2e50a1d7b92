"""Scanpy-style one-liner that fits ARMED and writes its latents into the AnnData."""

from __future__ import annotations

import inspect
from typing import Any

from anndata import AnnData

from .._arguments import check_arguments, check_plan_kwargs
from .._validation import check_anndata, check_likelihood, get_matrix, matrix_name
from ..model import ArmedRNA
from ..model._base import RENAMED_ARGUMENTS, _h5ad_safe
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
    key_added: str = "armed",
    seed: int = 0,
    **kwargs: Any,
) -> ArmedRNA:
    """Fit :class:`~armed_bio.model.ArmedRNA` and write its latents into ``adata``.

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
    key_added
        Name of this run: the latents go to ``.obsm[f"X_{key_added}_fe"]`` and
        ``.obsm[f"X_{key_added}_re"]``, the record of the run (this call's arguments, the
        model's parameters and its training) to ``.uns[key_added]``. A second run under
        another name leaves the first in place.
    seed
        Seed for initialisation and training.
    **kwargs
        Model arguments (``mode``, ``likelihood``, ``n_latent``, ...) and training
        arguments (``max_epochs``, ``batch_size``, ``accelerator``, ...), told apart by name.

    Returns
    -------
    The trained model. ``adata`` gains ``.obsm["X_armed_fe"]``, ``.obsm["X_armed_re"]``
    (when the mode has random effects) and ``.uns["armed"]`` (with the default
    ``key_added``).
    """
    check_anndata(adata)
    if not isinstance(key_added, str) or not key_added.strip():
        raise ValueError(f"armed: key_added must be a non-empty string, got {key_added!r}.")
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
    model.write_to_adata(
        adata, fe_key=f"X_{key_added}_fe", re_key=f"X_{key_added}_re", uns_key=key_added
    )
    call = {"batch_key": batch_key, "layer": layer, "labels_key": labels_key, "seed": seed}
    adata.uns[key_added]["call"] = _h5ad_safe({**call, **kwargs})
    return model
