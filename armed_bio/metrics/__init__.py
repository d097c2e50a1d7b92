"""Metrics of batch mixing and biological conservation, and of segmentation."""

from ._batch_predictability import batch_predictability
from ._cluster import cluster_scores
from ._objects import match_masks, match_objects
from ._scib import kmeans_nmi_ari, scib

__all__ = [
    "batch_predictability",
    "cluster_scores",
    "kmeans_nmi_ari",
    "match_masks",
    "match_objects",
    "scib",
]
