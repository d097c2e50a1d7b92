"""What every ARMED module shares on the batch side: the design ``Z`` and the soft ``Z``."""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Deterministic latents still report a variance so scvi helpers built on Normal(qzm, qzv) work.
DETERMINISTIC_VAR = 1e-8


class BatchDesignMixin:
    """Needs ``self.n_batch``, ``self._normalise``, ``self.z_predictor``, ``self.z_temperature``."""

    def design_matrix(self, batch_index: torch.Tensor) -> torch.Tensor:
        """One-hot ``Z`` of shape ``(batch, n_batch)`` from integer codes ``(batch, 1)``."""
        return F.one_hot(batch_index.view(-1).long(), self.n_batch).float()

    @torch.no_grad()
    def batch_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(cells, n_batch_reference)`` of each seen batch."""
        logits = self.z_predictor(self._normalise(x)[0])
        return torch.softmax(logits / self.z_temperature, dim=-1)
