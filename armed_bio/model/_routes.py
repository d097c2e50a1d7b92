"""The design matrix ``Z`` of each cell: seen batch, soft ``Z`` or ``Z = 0``.

A cell of a batch the model has random effects for gets its one-hot ``Z``. A cell of any other
batch gets the Z-predictor's calibrated batch probabilities (soft ``Z``: a mixture of the seen
batches it resembles), unless the prediction is unsure, in which case it gets ``Z = 0``
(fixed effects only).

"Unsure" means the normalised entropy ``H(p) / log(K)`` of the probabilities over the ``K``
seen batches exceeds ``threshold`` (default 0.5). 0 is a certain prediction, 1 the uniform one;
0.5 corresponds to an effective number of batches ``exp(H)`` of ``sqrt(K)``: for 4 seen
batches, a cell spread evenly over two of them sits exactly at the threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ._data import UNSEEN

logger = logging.getLogger(__name__)

DEFAULT_ENTROPY_THRESHOLD = 0.5


@dataclass
class RouteCounts:
    """How many cells took each route during one call."""

    seen: int = 0
    soft: int = 0
    zero: int = 0
    unseen_batches: list = field(default_factory=list)

    def add(self, other: RouteCounts) -> None:
        self.seen += other.seen
        self.soft += other.soft
        self.zero += other.zero

    def message(self, what: str, threshold: float, routes_used: bool = True) -> str:
        """One log line describing the routes, e.g. for ``what="z_RE of"``.

        ``routes_used=False``: the output does not depend on the cells' own batch (``z_FE``,
        the FE head, counterfactuals); the line says so.
        """
        n_unseen = self.soft + self.zero
        if not routes_used:
            text = f"{what} {self.seen + n_unseen} cells; their own batch is not used"
            if n_unseen:
                text += f" ({n_unseen} are of unseen batches {self.unseen_batches})"
            return text + "."
        parts = []
        if self.seen:
            parts.append(f"{self.seen} of seen batches with their own random effects")
        if n_unseen:
            parts.append(
                f"{n_unseen} of unseen batches {self.unseen_batches}: soft Z from the "
                f"Z-predictor for {self.soft}, Z = 0 (fixed effects only) for {self.zero} "
                f"whose normalised batch entropy exceeded {threshold:g}"
            )
        return f"{what} {self.seen + n_unseen} cells: " + "; ".join(parts) + "."


def normalised_entropy(proba: torch.Tensor) -> torch.Tensor:
    """``H(p) / log(K)`` per row, in [0, 1]."""
    k = proba.shape[-1]
    if k < 2:
        return torch.zeros(proba.shape[:-1], device=proba.device)
    h = -(proba * torch.log(proba.clamp(min=1e-12))).sum(-1)
    return h / math.log(k)


def route_design(
    module, x: torch.Tensor, codes: np.ndarray, threshold: float
) -> tuple[torch.Tensor, RouteCounts]:
    """The ``(cells, n_batch)`` design matrix for a chunk and the routes it used."""
    n_batch = module.n_batch
    design = torch.zeros(x.shape[0], n_batch, device=x.device)
    codes_t = torch.as_tensor(codes, device=x.device)
    seen = codes_t != UNSEEN
    design[seen, codes_t[seen]] = 1.0
    counts = RouteCounts(seen=int(seen.sum()))
    unseen = (~seen).nonzero().view(-1)
    if unseen.numel() and module.has_random_effects:
        proba = module.batch_probabilities(x[unseen])
        sure = normalised_entropy(proba) <= threshold
        design[unseen[sure], : proba.shape[1]] = proba[sure]
        counts.soft = int(sure.sum())
        counts.zero = int((~sure).sum())
    else:
        counts.zero = int(unseen.numel())
    return design, counts


def check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"entropy_threshold must lie in [0, 1] (a normalised entropy), got {threshold!r}."
        )
    return float(threshold)
