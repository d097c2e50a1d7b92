"""Stop a training run whose loss goes non-finite, naming the step and the terms.

A diverged run (a learning rate far too high, extreme input values) otherwise finishes without
a word and leaves NaN weights, whose latents would then be written to the AnnData. The check
costs no host-device synchronisation per step on an accelerator: the first non-finite step and
its terms are recorded on the device, and the host looks every ``check_every`` steps and at
the end of each epoch (every step on the CPU, where a look is free).
"""

from __future__ import annotations

import torch


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss term; the message names the step, terms and fixes."""


class DivergenceGuard:
    """Device-side record of the first training step with a non-finite loss term.

    Parameters
    ----------
    check_every
        Steps between host checks on an accelerator (every step on the CPU).
    """

    def __init__(self, check_every: int = 25):
        self.check_every = check_every
        self.names: list[str] | None = None
        self._first_step: torch.Tensor | None = None
        self._bad_terms: torch.Tensor | None = None

    def record(self, step: int, terms: dict[str, torch.Tensor]) -> bool:
        """Record ``terms`` of training step ``step``; return whether the host should look now."""
        values = torch.stack([t.detach().float().sum() for t in terms.values()])
        finite = torch.isfinite(values)
        if self._first_step is None or self.names != list(terms):
            self.names = list(terms)
            self._first_step = torch.full((), -1, dtype=torch.long, device=values.device)
            self._bad_terms = torch.zeros_like(finite)
        new = (~finite.all()) & (self._first_step < 0)
        here = torch.full_like(self._first_step, step)
        self._first_step = torch.where(new, here, self._first_step)
        self._bad_terms = torch.where(new, ~finite, self._bad_terms)
        return values.device.type == "cpu" or (step + 1) % self.check_every == 0

    def first_bad(self) -> tuple[int, list[str]] | None:
        """``(step, non-finite term names)`` of the first bad step since the last reset, or None."""
        if self._first_step is None:
            return None
        step = int(self._first_step.item())  # the one host sync
        if step < 0:
            return None
        bad = self._bad_terms.cpu().tolist()
        return step, [name for name, b in zip(self.names, bad, strict=True) if b]

    def reset(self) -> None:
        self._first_step = None
        self._bad_terms = None


def divergence_message(
    step: int, epoch: int, max_epochs: int, terms: list[str], lrs: dict[str, float]
) -> str:
    """The error text of a diverged run (``step`` from 0): where, which terms, what to try."""
    rates = ", ".join(f"{k}={v:g}" for k, v in lrs.items())
    return (
        f"Training diverged at step {step + 1} (epoch {epoch + 1} of {max_epochs}): "
        f"{', '.join(terms)} became non-finite (NaN or inf). The learning rates were {rates} "
        "(defaults lr=0.001, adversary_lr=0.001, random_effects_lr=0.01): lower them with "
        "`train(plan_kwargs={'lr': ...})`, or lower adversary_weight; also check the input "
        "for extreme values. The model's weights were rolled back to the start of that epoch, "
        "the last finite state, and the model is not marked as trained."
    )
