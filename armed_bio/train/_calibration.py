"""Temperature scaling: calibrate a classifier's probabilities on held-out cells."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

# log10 temperatures searched; a grid is deterministic and the NLL is cheap to evaluate. The
# lower end stops held-out cells that are perfectly separated from driving T towards 0.
_LOG10_GRID = np.linspace(-1.0, 1.5, 251)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on ``targets``.

    Parameters
    ----------
    logits
        ``(cells, classes)`` held-out logits.
    targets
        ``(cells,)`` true class indices.

    Returns
    -------
    ``T`` in ``[0.1, 10**1.5]``; ``T > 1`` softens over-confident predictions.
    """
    if logits.shape[0] == 0:
        raise ValueError("Temperature scaling needs at least one held-out cell.")
    logits = logits.detach().float()
    targets = targets.view(-1).long()
    nll = [F.cross_entropy(logits / 10.0**t, targets).item() for t in _LOG10_GRID]
    return float(10.0 ** _LOG10_GRID[int(np.argmin(nll))])
