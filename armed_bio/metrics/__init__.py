"""Metrics of batch mixing and biological conservation."""

from ._cluster import cluster_scores

__all__ = ["cluster_scores"]
