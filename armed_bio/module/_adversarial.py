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
    """Needs ``self.adversary`` (a classifier) and ``self.adversary_input(inference_outputs)``.

    With labels the adversary can be label-conditional (:meth:`init_label_conditioning`): it
    is told each cell's label and must find the batch beyond it, so the FE latent is pushed
    towards independence of the batch *given* the label. Where labels and batches are
    confounded (a cell type missing from some batches), an unconditional adversary erases the
    label along with the batch.
    """

    def init_label_conditioning(self, conditional: bool, n_labels: int, n_batch: int) -> None:
        """Set ``conditional_adversary`` and the ``p(batch | label)`` buffer (saved with the
        weights; the model fills it from its training cells)."""
        self.conditional_adversary = bool(conditional) and n_labels > 0
        self.register_buffer("batch_given_label",
                             torch.full((max(n_labels, 1), n_batch), 1.0 / n_batch))

    @property
    def n_adversary_label_inputs(self) -> int:
        """Extra adversary inputs: the one-hot label when the adversary is conditional."""
        return self.batch_given_label.shape[0] if self.conditional_adversary else 0

    def with_label(self, h: torch.Tensor, inference_outputs: dict) -> torch.Tensor:
        """``h`` with the one-hot label appended when the adversary is conditional."""
        if not self.conditional_adversary:
            return h
        labels = inference_outputs["labels"].view(-1).long()
        one_hot = F.one_hot(labels, self.batch_given_label.shape[0]).to(h.dtype)
        return torch.cat([h, one_hot], dim=-1)

    def adversary_prior(self, inference_outputs: dict) -> torch.Tensor | None:
        """Per-cell ``p(batch | label)`` for the conditional ``"confusion"`` objective."""
        if not self.conditional_adversary:
            return None
        return self.batch_given_label[inference_outputs["labels"].view(-1).long()]

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
