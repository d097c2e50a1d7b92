"""Training plan for ARMED: alternating adversary and main updates."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan

from ..module._armed_vae import ArmedVAEModule
from ..nn import RandomEffect


class ArmedTrainingPlan(TrainingPlan):
    """Manual two-optimizer plan: adversary step on detached FE activations, then main step.

    Each step runs one forward pass. The adversary is updated first to predict the batch from
    the detached activations; the main networks are then updated on the ARMED objective, which
    subtracts ``lambda_g`` times the (updated) adversary's cross-entropy. The adversary's
    parameters are excluded from the main optimizer.

    Parameters
    ----------
    module
        An :class:`~armed_bio.module.ArmedVAEModule`.
    lr
        Learning rate of the main optimizer (Adam).
    adversary_lr
        Learning rate of the adversary's own Adam.
    random_effects_lr
        Learning rate of the random-effect posteriors (means and scales).
    warmup_fraction
        Fraction of all training steps over which ``lambda_g`` and the KL weight rise linearly
        from 0 to their full value, unless ``n_steps_adversary_warmup``/``n_steps_kl_warmup``
        are given.
    n_steps_adversary_warmup, n_steps_kl_warmup
        Explicit warm-up lengths in optimizer steps.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``weight_decay``, ``eps``,
        ``reduce_lr_on_plateau``, ...).
    """

    def __init__(
        self,
        module: ArmedVAEModule,
        *,
        lr: float = 1e-3,
        adversary_lr: float = 1e-3,
        random_effects_lr: float = 1e-2,
        warmup_fraction: float = 0.25,
        n_steps_adversary_warmup: int | None = None,
        n_steps_kl_warmup: int | None = None,
        **kwargs,
    ):
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, lr=lr, n_steps_kl_warmup=n_steps_kl_warmup, **kwargs)
        self.automatic_optimization = False
        self.adversary_lr = adversary_lr
        self.random_effects_lr = random_effects_lr
        self.warmup_fraction = warmup_fraction
        self.n_steps_adversary_warmup = n_steps_adversary_warmup
        # Lightning's global_step counts every optimizer.step() under manual optimisation (two
        # per step here), so the plan keeps its own count of training steps.
        self.armed_step = 0

    def on_train_start(self) -> None:
        total = int(self.trainer.max_epochs * self.trainer.num_training_batches)
        default = max(1, int(self.warmup_fraction * total))
        if self.n_steps_adversary_warmup is None:
            self.n_steps_adversary_warmup = default
        if self.n_steps_kl_warmup is None:
            self.n_steps_kl_warmup = default

    @property
    def kl_weight(self) -> float:
        if not self.n_steps_kl_warmup:
            return self.max_kl_weight
        frac = min(1.0, self.armed_step / self.n_steps_kl_warmup)
        return self.min_kl_weight + frac * (self.max_kl_weight - self.min_kl_weight)

    @property
    def adversary_warmup(self) -> float:
        if not self.n_steps_adversary_warmup:
            return 1.0
        return min(1.0, self.armed_step / self.n_steps_adversary_warmup)

    def _loss_kwargs(self) -> dict:
        return {**self.loss_kwargs, "kl_weight": self.kl_weight,
                "adversary_warmup": self.adversary_warmup}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        opt_main = optimizers[0]
        inference_outputs, generative_outputs = self.module(batch, compute_loss=False)

        if self.module.has_adversary and len(optimizers) > 1:
            opt_adv = optimizers[1]
            adv_ce, adv_acc = self.module.adversary_loss(inference_outputs, batch["batch"])
            opt_adv.zero_grad()
            self.manual_backward(adv_ce)
            opt_adv.step()

        loss_output = self.module.loss(
            batch, inference_outputs, generative_outputs, **self._loss_kwargs()
        )
        opt_main.zero_grad()
        self.manual_backward(loss_output.loss)
        opt_main.step()
        self.armed_step += 1

        self.log("train_loss", loss_output.loss.detach(), on_epoch=True, on_step=False,
                 prog_bar=True, sync_dist=self.use_sync_dist)
        self.log("kl_weight", self.kl_weight, on_epoch=True, on_step=False)
        self.compute_and_log_metrics(loss_output, self.train_metrics, "train")
        return loss_output.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, _, loss_output = self.module(batch, loss_kwargs=self._loss_kwargs())
        self.log("validation_loss", loss_output.loss, on_epoch=True, on_step=False,
                 sync_dist=self.use_sync_dist)
        self.compute_and_log_metrics(loss_output, self.val_metrics, "validation")

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        """scvi's metric logging, with the extra metrics logged outside inference mode.

        scvi-tools (1.4 and 1.5) runs ``compute_and_log_metrics`` under
        ``torch.inference_mode``, so Lightning's accumulators of the extra metrics become
        inference tensors; under DDP their epoch-end sync updates them in place and fails.
        """
        extra = loss_output.extra_metrics
        loss_output.extra_metrics = {}
        try:
            super().compute_and_log_metrics(loss_output, metrics, mode)
        finally:
            loss_output.extra_metrics = extra
        for key, value in extra.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                self.log(f"{key}_{mode}", value.detach(), on_step=self.on_step,
                         on_epoch=self.on_epoch, batch_size=loss_output.n_obs_minibatch,
                         sync_dist=self.use_sync_dist)

    def on_validation_epoch_end(self) -> None:
        # Manual optimisation: Lightning does not step schedulers for us.
        sch = self.lr_schedulers()
        if sch is not None and self.reduce_lr_on_plateau:
            metric = self.trainer.callback_metrics.get(self.lr_scheduler_metric)
            if metric is not None:
                sch.step(metric)

    def configure_optimizers(self):
        adversary = set()
        if self.module.has_adversary:
            adversary = {id(p) for p in self.module.adversary.parameters()}
        random_effects = {
            id(p) for m in self.module.modules() if isinstance(m, RandomEffect)
            for p in m.parameters()
        }
        trainable = [
            p for p in self.module.parameters() if p.requires_grad and id(p) not in adversary
        ]
        opt_main = self.get_optimizer_creator()(
            [p for p in trainable if id(p) not in random_effects]
        )
        # Random-effect posteriors get their own learning rate: Adam moves a parameter by about
        # lr per step, and per-batch effects of order 1 must be reachable within the ~1,000
        # steps of a run, or the encoder learns the batch instead.
        re_params = [p for p in trainable if id(p) in random_effects]
        if re_params:
            opt_main.add_param_group({"params": re_params, "lr": self.random_effects_lr})
        optimizers = [opt_main]
        adv_params = [] if not adversary else [
            p for p in self.module.adversary.parameters() if p.requires_grad
        ]
        if adv_params:
            optimizers.append(
                torch.optim.Adam(adv_params, lr=self.adversary_lr, eps=self.eps,
                                 weight_decay=self.weight_decay)
            )
        if self.reduce_lr_on_plateau:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt_main, patience=self.lr_patience, factor=self.lr_factor,
                threshold=self.lr_threshold, min_lr=self.lr_min, threshold_mode="abs",
            )
            return optimizers, [scheduler]
        return optimizers
