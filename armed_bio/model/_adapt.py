"""Adaptation: fit random effects for batches never seen in training, all else frozen.

This is ARMED's version of scArches' reference mapping, done without scvi-tools'
``load_query_data``: that one freezes parameters by name and, in scvi-tools 1.4.2, also
freezes per-batch parameters, so new batches would never train. Here the model is copied,
every random-effect layer gets one row per new batch, started at the mixture of seen batches
that the Z-predictor assigns to the new batch's cells, and only those rows are fitted.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _validation as check
from ..nn import RandomEffect
from ._data import UNSEEN, batch_codes, check_genes, check_query_matrix, iter_chunks

logger = logging.getLogger(__name__)

# Optimizer steps a default adaptation aims for, and its epoch cap.
ADAPT_TARGET_STEPS = 400
MAX_ADAPT_EPOCHS = 100


def _trainable_random_effects(module) -> list[RandomEffect]:
    """Random effects that query counts inform: the decoder's and the RE encoder's.

    The label head's rows for a new batch stay at their soft-``Z`` start: without labels in
    the query there is nothing to fit them to.
    """
    parts = [module.decoder] + ([module.re_encoder] if module.has_random_encoder else [])
    return [m for part in parts for m in part.modules() if isinstance(m, RandomEffect)]


def adapt_model(
    model,
    query,
    max_epochs: int | None,
    batch_size: int,
    lr: float,
    seed: int,
    progress_bar: bool,
):
    """See :meth:`armed_bio.model.ArmedRNA.adapt`."""
    model._check_if_trained(warn=False)
    model._require_random_effects("Adapting to new batches")
    check.check_anndata(query, "query")
    check_genes(query, model.adata.var_names)
    setup = model.registry_["setup_args"]
    batch_key = setup["batch_key"]
    check.check_batch_key(query, batch_key, min_batches=1)
    matrix = check_query_matrix(query, setup.get("layer"), model.module.likelihood)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")

    all_cells = np.arange(query.n_obs)
    codes, new_batches = batch_codes(query, batch_key, model.batch_categories_, all_cells)
    if not new_batches:
        raise ValueError(
            f"Every batch in query.obs[{batch_key!r}] was seen in training, so there is nothing "
            "to adapt: use the model directly on the query."
        )
    values = query.obs[batch_key].to_numpy()
    new_cells = np.flatnonzero(codes == UNSEEN)
    n_old = model.module.n_batch
    new_codes = np.full(query.n_obs, UNSEEN, dtype=np.int64)
    for j, name in enumerate(new_batches):
        new_codes[values == name] = n_old + j
    n_steps_epoch = math.ceil(len(new_cells) / batch_size)
    if max_epochs is None:
        max_epochs = min(MAX_ADAPT_EPOCHS, max(1, math.ceil(ADAPT_TARGET_STEPS / n_steps_epoch)))
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")

    adapted = copy.copy(model)
    module = copy.deepcopy(model.module)
    adapted.module = module
    adapted.batch_categories_ = list(model.batch_categories_) + list(new_batches)
    device = next(module.parameters()).device

    # Start each new batch at the seen batches its cells resemble (mean calibrated soft Z).
    module.eval()
    init = torch.zeros(len(new_batches), n_old)
    with torch.no_grad():
        for j in range(len(new_batches)):
            cells = np.flatnonzero(new_codes == n_old + j)
            total = torch.zeros(module.n_batch_reference)
            for _, x in iter_chunks(matrix, cells, 4096):
                total += module.batch_probabilities(x.to(device)).sum(0).cpu()
            init[j, : module.n_batch_reference] = total / len(cells)
    module.add_clusters(init)

    effects = _trainable_random_effects(module)
    params = [p for m in effects for p in m.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)

    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    losses = []
    try:
        for m in effects:
            m.train()  # sample the posteriors: fits their s.d. as well as their means
        for _ in tqdm(range(max_epochs), desc="Adapting", disable=not progress_bar):
            order = generator.permutation(new_cells)
            epoch_loss = 0.0
            for part, x in iter_chunks(matrix, order, batch_size):
                x = x.to(device)
                batch_index = torch.as_tensor(new_codes[order[part]], device=device).view(-1, 1)
                tensors = {"X": x, "batch": batch_index}
                inference_outputs = module.inference(x, batch_index)
                generative_outputs = module.generative(
                    inference_outputs["z"], inference_outputs["library"], batch_index
                )
                loss = module.adaptation_loss(
                    tensors, inference_outputs, generative_outputs, n_obs=len(new_cells)
                )
                optimizer.zero_grad()
                loss.backward()
                for p in params:  # seen batches' rows stay exactly as trained
                    p.grad[:n_old] = 0.0
                optimizer.step()
                epoch_loss += loss.item() * x.shape[0]
            losses.append(epoch_loss / len(new_cells))
    finally:
        for p in module.parameters():
            p.requires_grad_(True)
        module.eval()

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
        f"Adapted to {len(new_batches)} new batches {list(new_batches)} from {len(new_cells)} "
        f"cells in {max_epochs} epochs (shared weights frozen)"
        + (f"; {n_seen} query cells of seen batches were not used." if n_seen else ".")
    )
    return adapted

