"""Plots of batch effects (matplotlib; each returns its Figure, scanpy-style show/save)."""

from ._counterfactuals import counterfactuals, gene_layout
from ._differential import differential_expression
from ._embeddings import embeddings
from ._image_counterfactuals import image_counterfactuals
from ._metrics import metrics
from ._random_effects import random_effects
from ._training import training

__all__ = [
    "counterfactuals",
    "differential_expression",
    "embeddings",
    "gene_layout",
    "image_counterfactuals",
    "metrics",
    "random_effects",
    "training",
]
