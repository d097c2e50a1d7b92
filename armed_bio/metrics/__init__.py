"""Metrics of batch mixing and biological conservation, and of segmentation."""

from ._batch_predictability import batch_predictability
from ._cluster import cluster_scores
from ._objects import match_masks, match_objects
from ._scib import scib

__all__ = ["batch_predictability", "cluster_scores", "match_masks", "match_objects", "scib"]
