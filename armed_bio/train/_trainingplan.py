"""Training plan for ARMED: alternating adversary and main updates."""

from __future__ import annotations

import json

import torch
from scvi.train import TrainingPlan

from ..module import ArmedModuleBase
from ._checkpoint import CHECKPOINT_KEY, rng_states, set_rng_states, write_checkpoint
from ._divergence import DivergenceGuard, TrainingDivergedError, divergence_message


class ArmedTrainingPlan(TrainingPlan):
    """Manual two-optimizer plan: adversary step on detached FE activations, then main step.

    Each step runs one forward pass. The adversary is updated first to predict the batch from
    the detached activations; the main networks are then updated on the ARMED objective, which
    subtracts ``lambda_g`` times the (updated) adversary's cross-entropy. The adversary's
    parameters are excluded from the main optimizer.

    Parameters
    ----------
    module
        An ARMED module (a :class:`~armed_bio.module.ArmedModuleBase` subclass).
    lr
        Learning rate of the main optimizer (Adam).
    adversary_lr
        Learning rate of the adversary's own Adam.
    adversary_lr_end
        If given, the adversary's learning rate rises geometrically from ``adversary_lr``
        once its warm-up ends (``lambda_g`` at full weight) to this value at the last step.
    random_effects_lr
        Learning rate of the random-effect posteriors (means and scales).
    warmup_fraction
        Fraction of all training steps over which ``lambda_g`` and the KL weight rise linearly
        from 0 to their full value, unless ``n_steps_adversary_warmup``/``n_steps_kl_warmup``
        are given.
    n_steps_adversary_warmup, n_steps_kl_warmup
        Explicit warm-up lengths in optimizer steps.
    checkpoint_dir
        Folder to write a resumable checkpoint (``last.ckpt``) to, every
        ``checkpoint_every_n_epochs`` epochs and after the last; ``None``: none. Models set it
        from ``train(checkpoint_dir=...)``.
    checkpoint_every_n_epochs
        Epochs between checkpoints.
    checkpoint_run
        The run's settings, stored in the checkpoint and compared on resume.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``weight_decay``, ``eps``,
        ``reduce_lr_on_plateau``, ...).
    """

    def __init__(
        self,
        module: ArmedModuleBase,
        *,
        lr: float = 1e-3,
        adversary_lr: float = 1e-3,
        adversary_lr_end: float | None = None,
        random_effects_lr: float = 1e-2,
        warmup_fraction: float = 0.25,
        n_steps_adversary_warmup: int | None = None,
        n_steps_kl_warmup: int | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every_n_epochs: int = 1,
        checkpoint_run: dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, lr=lr, n_steps_kl_warmup=n_steps_kl_warmup, **kwargs)
        self.automatic_optimization = False
        self.adversary_lr = adversary_lr
        self.adversary_lr_end = adversary_lr_end
        self.n_steps_total = 0
        self.random_effects_lr = random_effects_lr
        self.warmup_fraction = warmup_fraction
        self.n_steps_adversary_warmup = n_steps_adversary_warmup
        # Lightning's global_step counts every optimizer.step() under manual optimisation (two
        # per step here), so the plan keeps its own count of training steps.
        self.armed_step = 0
        # mode -> metric -> (cell-weighted sum, cells) over the current epoch.
        self._epoch_sums: dict[str, dict[str, tuple]] = {}
        self._guard = DivergenceGuard()
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every_n_epochs = checkpoint_every_n_epochs
        self.checkpoint_run = checkpoint_run or {}
        # epoch -> the metrics logged for it: replayed into the history on resume.
        self._epoch_log: dict[int, dict[str, float]] = {}
        # The weights at the start of the epoch: where a diverged run is rolled back to.
        self._epoch_start_state: dict[str, torch.Tensor] | None = None

    def on_train_start(self) -> None:
        total = int(self.trainer.max_epochs * self.trainer.num_training_batches)
        self.n_steps_total = total
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

    def current_adversary_lr(self) -> float:
        """The adversary's learning rate at this step (constant unless ``adversary_lr_end``)."""
        if self.adversary_lr_end is None:
            return self.adversary_lr
        start = self.n_steps_adversary_warmup or 0
        span = max(1, self.n_steps_total - 1 - start)
        frac = min(1.0, max(0.0, (self.armed_step - start) / span))
        return self.adversary_lr * (self.adversary_lr_end / self.adversary_lr) ** frac

    def _loss_kwargs(self) -> dict:
        return {
            **self.loss_kwargs,
            "kl_weight": self.kl_weight,
            "adversary_warmup": self.adversary_warmup,
        }

    def on_train_epoch_start(self) -> None:
        self._epoch_start_state = {
            k: v.detach().clone() for k, v in self.module.state_dict().items()
        }

    def _diverged(self, step: int, terms: list[str]) -> None:
        """Roll the weights back to the start of the epoch and raise the named error."""
        if self._epoch_start_state is not None:
            self.module.load_state_dict(self._epoch_start_state)
        lrs = {
            "lr": self.lr,
            "adversary_lr": self.current_adversary_lr(),
            "random_effects_lr": self.random_effects_lr,
        }
        raise TrainingDivergedError(
            divergence_message(step, self.current_epoch, self.trainer.max_epochs, terms, lrs)
        )

    def _check_divergence(self) -> None:
        bad = self._guard.first_bad()
        if bad is not None:
            self._diverged(*bad)

    def _check_weights(self) -> None:
        """Raise if any weight is non-finite (a last look once per epoch)."""
        params = dict(self.module.named_parameters())
        finite = torch.stack([p.detach().isfinite().all() for p in params.values()])
        if not bool(finite.all()):
            names = [n for n, ok in zip(params, finite.tolist(), strict=True) if not ok]
            self._diverged(self.armed_step, [f"weights {', '.join(names[:5])}"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        opt_main = optimizers[0]
        inference_outputs, generative_outputs = self.module(batch, compute_loss=False)
        adv_ce = None
        if self.module.has_adversary and len(optimizers) > 1:
            opt_adv = optimizers[1]
            if self.adversary_lr_end is not None:
                for group in opt_adv.param_groups:
                    group["lr"] = self.current_adversary_lr()
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
        terms = {
            "reconstruction_loss": loss_output.reconstruction_loss_sum,
            "kl_local": loss_output.kl_local_sum,
            "kl_global": loss_output.kl_global_sum,
            **loss_output.extra_metrics,
            **({} if adv_ce is None else {"adversary_cross_entropy": adv_ce}),
            "loss": loss_output.loss,
        }
        if self._guard.record(self.armed_step, terms):
            self._check_divergence()
        self.armed_step += 1

        n_obs = loss_output.n_obs_minibatch
        logged = {"train_loss": loss_output.loss, "kl_weight": self.kl_weight}
        if self.adversary_lr_end is not None:
            logged["adversary_lr"] = self.current_adversary_lr()
        self._accumulate("train", logged, n_obs)
        self.compute_and_log_metrics(loss_output, self.train_metrics, "train")
        return loss_output.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, _, loss_output = self.module(batch, loss_kwargs=self._loss_kwargs())
        self._accumulate(
            "validation", {"validation_loss": loss_output.loss}, loss_output.n_obs_minibatch
        )
        self.compute_and_log_metrics(loss_output, self.val_metrics, "validation")

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        """Accumulate scvi's ELBO terms and the extra metrics; they are logged once per epoch.

        The history keeps scvi's names and meaning (``elbo_``, ``reconstruction_loss_``,
        ``kl_local_``, ``kl_global_`` + mode, then every extra metric). Two reasons not to
        ``self.log`` at every step as scvi does: Lightning's ``log`` costs about a millisecond
        per call (a quarter of a CPU training step with a dozen metrics, more on a GPU), and
        scvi-tools (1.4 and 1.5) logs under ``torch.inference_mode``, which makes Lightning's
        accumulators inference tensors that DDP's epoch-end sync cannot update.
        """
        n_obs = loss_output.n_obs_minibatch
        values = {
            f"reconstruction_loss_{mode}": loss_output.reconstruction_loss_sum / n_obs,
            f"kl_local_{mode}": loss_output.kl_local_sum / n_obs,
        }
        for key, value in loss_output.extra_metrics.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                values[f"{key}_{mode}"] = value
        self._accumulate(mode, values, n_obs)
        # scvi averages the global KL per minibatch, not per cell.
        self._accumulate(mode, {f"kl_global_{mode}": loss_output.kl_global_sum}, 1)

    def _accumulate(self, mode: str, values: dict, weight: int) -> None:
        """Add weighted sums of scalar metrics, kept on their device (no sync per step)."""
        sums = self._epoch_sums.setdefault(mode, {})
        for key, value in values.items():
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            total, count = sums.get(key, (0.0, 0))
            sums[key] = (total + value * weight, count + weight)

    def _log_epoch_means(self, mode: str) -> None:
        means = {
            key: torch.as_tensor(total / count, dtype=torch.float32, device=self.device)
            for key, (total, count) in self._epoch_sums.pop(mode, {}).items()
        }
        if f"reconstruction_loss_{mode}" in means:
            n_total = self.n_obs_training if mode == "train" else self.n_obs_validation
            means[f"elbo_{mode}"] = (
                means[f"reconstruction_loss_{mode}"]
                + means[f"kl_local_{mode}"]
                + means[f"kl_global_{mode}"] / max(1, n_total or 1)
            )
        record = self._epoch_log.setdefault(int(self.current_epoch), {})
        record.update({key: float(mean) for key, mean in means.items()})
        for key, mean in means.items():
            self.log(
                key,
                mean,
                on_step=False,
                on_epoch=True,
                prog_bar=key == "train_loss",
                sync_dist=self.use_sync_dist,
            )

    def on_train_epoch_end(self) -> None:
        self._check_divergence()
        self._check_weights()
        self._log_epoch_means("train")
        epoch = self.current_epoch + 1
        every = self.checkpoint_every_n_epochs
        if self.checkpoint_dir and (epoch % every == 0 or epoch == self.trainer.max_epochs):
            write_checkpoint(self.trainer, self.checkpoint_dir)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "armed_step": self.armed_step,
            "history": {str(k): v for k, v in self._epoch_log.items()},
            "rng": rng_states(),
            "run": json.dumps(self.checkpoint_run, sort_keys=True, default=str),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the step counter and generators; replay the history into the logger."""
        state = checkpoint[CHECKPOINT_KEY]
        self.armed_step = int(state["armed_step"])
        self._epoch_log = {int(k): v for k, v in state["history"].items()}
        set_rng_states(state["rng"])
        if self.trainer.logger is not None:
            for epoch, metrics in sorted(self._epoch_log.items()):
                self.trainer.logger.log_metrics({**metrics, "epoch": epoch}, step=epoch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("validation")
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
            id(p)
            for entry in self.module.random_effect_layers().values()
            for p in entry.layer.parameters()
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
        adv_params = (
            []
            if not adversary
            else [p for p in self.module.adversary.parameters() if p.requires_grad]
        )
        if adv_params:
            optimizers.append(
                torch.optim.Adam(
                    adv_params, lr=self.adversary_lr, eps=self.eps, weight_decay=self.weight_decay
                )
            )
        if self.reduce_lr_on_plateau:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt_main,
                patience=self.lr_patience,
                factor=self.lr_factor,
                threshold=self.lr_threshold,
                min_lr=self.lr_min,
                threshold_mode="abs",
            )
            return optimizers, [scheduler]
        return optimizers
