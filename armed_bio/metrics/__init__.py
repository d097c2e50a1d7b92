"""Metrics of batch mixing and biological conservation, and of segmentation."""

from ._cluster import cluster_scores
from ._objects import match_objects
from ._scib import scib

__all__ = ["cluster_scores", "match_objects", "scib"]
