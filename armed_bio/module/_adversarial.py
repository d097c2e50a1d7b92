"""The adversarial part shared by every ARMED module: the adversary's step and the FE penalty."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

ADVERSARY_OBJECTIVES: tuple[str, ...] = ("negative_ce", "confusion")


def check_objective(objective: str) -> str:
    if objective not in ADVERSARY_OBJECTIVES:
        raise ValueError(
            f"adversary_objective must be one of {ADVERSARY_OBJECTIVES}, got {objective!r}."
        )
    return objective


class AdversaryMixin:
    """Needs ``self.adversary`` (a classifier) and ``self.adversary_input(inference_outputs)``."""

    def adversary_loss(
        self, inference_outputs: dict, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the adversary on detached FE activations."""
        logits = self.adversary(self.adversary_input(inference_outputs).detach())
        target = batch_index.view(-1).long()
        ce = F.cross_entropy(logits, target)
        acc = (logits.argmax(-1) == target).float().mean()
        return ce, acc


def adversary_penalty(
    logits: torch.Tensor, target: torch.Tensor, weight: float, objective: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The term the FE networks add to their loss to fool the adversary, and metrics.

    ``"negative_ce"``: ``-weight * CE`` (the ARMED paper's form). ``"confusion"``: ``weight``
    times the cross-entropy of the adversary's prediction against the uniform distribution,
    minus its minimum ``log K``: zero when the batches are indistinguishable, never rewarding a
    confidently wrong adversary.
    """
    ce = F.cross_entropy(logits, target)
    if objective == "confusion":
        fool = -torch.log_softmax(logits, dim=-1).mean(-1).mean()
        term = weight * (fool - math.log(logits.shape[-1]))
    else:
        term = -weight * ce
    metrics = {
        "adversary_ce": ce.detach(),
        "adversary_accuracy": (logits.argmax(-1) == target).float().mean().detach(),
        "adversary_weight": torch.tensor(float(weight)),
    }
    return term, metrics
