"""Metrics of batch mixing and biological conservation."""

from ._cluster import cluster_scores
from ._scib import scib

__all__ = ["cluster_scores", "scib"]
