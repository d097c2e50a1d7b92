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
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: float | torch.Tensor,
    objective: str,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The term the FE networks add to their loss to fool the adversary, and metrics.

    ``"negative_ce"``: ``-weight * CE`` (the ARMED paper's form). ``"confusion"``: ``weight``
    times ``KL(prior || adversary's prediction)``: zero when the adversary can do no better than
    the prior, never rewarding a confidently wrong adversary. The prior is uniform over the
    ``K`` batches by default (the KL is then the cross-entropy against uniform minus
    ``log K``); ``prior`` gives one distribution per cell (``(cells, K)``), e.g. the batch
    frequencies among cells of the same label for a label-conditional adversary.
    """
    ce = F.cross_entropy(logits, target)
    if objective == "confusion":
        log_p = torch.log_softmax(logits, dim=-1)
        if prior is None:
            term = weight * (-log_p.mean(-1).mean() - math.log(logits.shape[-1]))
        else:
            kl = (prior * (torch.log(prior.clamp(min=1e-12)) - log_p)).sum(-1)
            term = weight * kl.mean()
    else:
        term = -weight * ce
    metrics = {
        "adversary_ce": ce.detach(),
        "adversary_accuracy": (logits.argmax(-1) == target).float().mean().detach(),
        # A tensor weight stays on its device: float() would wait for the GPU every step.
        "adversary_weight": torch.as_tensor(weight, dtype=ce.dtype, device=ce.device).detach(),
    }
    return term, metrics
