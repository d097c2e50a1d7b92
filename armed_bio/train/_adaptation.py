"""Training plan for adaptation: fit new batches' random effects, everything else frozen.

This is ARMED's version of scArches' reference mapping, done without scvi-tools'
``load_query_data``: that one freezes parameters by name and, in scvi-tools 1.4.2, also
freezes per-batch parameters, so new batches would never train. Here only the new batches'
rows of the random effects that query counts inform (the decoder's and the random-effects
encoder's) are fitted; the label head's rows keep their start, as the query has no labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch

from .._chunks import iter_chunks
from ..nn import RandomEffect


def adaptable_random_effects(module) -> list[RandomEffect]:
    """Random effects that query counts inform: the decoder's and the RE encoder's."""
    parts = [module.decoder] + ([module.re_encoder] if module.has_random_encoder else [])
    return [m for part in parts for m in part.modules() if isinstance(m, RandomEffect)]


class QueryMinibatches(torch.utils.data.IterableDataset):
    """Shuffled minibatches of query cells, a new permutation each epoch.

    Parameters
    ----------
    matrix
        The query's cells x genes matrix (dense or sparse).
    cells
        Positions of the cells to fit.
    codes
        Batch code of every query cell (indexed by position).
    batch_size
        Cells per minibatch.
    seed
        Seed of the permutations.
    """

    def __init__(self, matrix, cells: np.ndarray, codes: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.matrix, self.cells, self.codes = matrix, cells, codes
        self.batch_size = batch_size
        self.generator = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.cells) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.generator.permutation(self.cells)
        for part, x in iter_chunks(self.matrix, order, self.batch_size):
            yield {"X": x, "batch": torch.as_tensor(self.codes[order[part]]).view(-1, 1)}


class AdaptationTrainingPlan(pl.LightningModule):
    """Fit the rows of new batches (codes ``>= n_old``) of a module's adaptable random effects.

    The module stays in eval mode (no dropout) except its random effects, which sample their
    posteriors so that the fit covers their s.d. as well as their means. Gradients of the
    seen batches' rows are zeroed before every step, so those rows stay exactly as trained.

    Parameters
    ----------
    module
        An :class:`~armed_bio.module.ArmedVAEModule` whose random effects already have rows for
        the new batches (``add_batches``).
    n_old
        Number of batches the module had before; their rows are frozen.
    n_obs
        Number of query cells fitted (the KL is divided by it).
    lr
        Adam learning rate of the new rows.
    """

    def __init__(self, module, n_old: int, n_obs: int, lr: float):
        super().__init__()
        self.module = module
        self.effects = adaptable_random_effects(module)
        self.n_old, self.n_obs, self.lr = n_old, n_obs, lr
        self.epoch_losses: list[float] = []
        self._epoch_sum = 0.0

    @property
    def fitted_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the plan optimises (whole tensors; seen rows get zero gradients)."""
        return [p for m in self.effects for p in m.parameters()]

    def on_train_epoch_start(self) -> None:
        self.module.eval()
        for m in self.effects:
            m.train()
        self._epoch_sum = 0.0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, batch_index = batch["X"], batch["batch"]
        inference_outputs = self.module.inference(x, batch_index)
        generative_outputs = self.module.generative(
            inference_outputs["z"], inference_outputs["library"], inference_outputs["design"]
        )
        loss = self.module.adaptation_loss(
            batch, inference_outputs, generative_outputs, n_obs=self.n_obs
        )
        self._epoch_sum += loss.item() * x.shape[0]
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for p in self.fitted_parameters:  # seen batches' rows stay exactly as trained
            p.grad[: self.n_old] = 0.0

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(self._epoch_sum / self.n_obs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.fitted_parameters, lr=self.lr)


def fit_new_batches(
    module,
    minibatches: QueryMinibatches,
    n_old: int,
    max_epochs: int,
    lr: float,
    seed: int,
    progress_bar: bool,
) -> list[float]:
    """Fit the new batches' random effects of ``module`` in place; return the epoch losses.

    Every other parameter is frozen for the fit and released afterwards; the module is left
    in eval mode. ``seed`` seeds the random effects' posterior samples.
    """
    plan = AdaptationTrainingPlan(module, n_old, len(minibatches.cells), lr)
    fitted = {id(p) for p in plan.fitted_parameters}
    device = next(module.parameters()).device
    # A generator of its own: the loader must not draw from the global RNG, which the
    # random effects' posterior samples use.
    loader = torch.utils.data.DataLoader(minibatches, batch_size=None, generator=torch.Generator())
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        num_sanity_val_steps=0,
    )
    try:
        for p in module.parameters():
            p.requires_grad_(id(p) in fitted)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            # The module is in eval mode on purpose: only its random effects sample.
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
            trainer.fit(plan, train_dataloaders=loader)
    finally:
        for p in module.parameters():
            p.requires_grad_(True)
        module.eval()
    return plan.epoch_losses
