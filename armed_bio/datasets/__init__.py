"""Bundled real datasets and simulators."""

from ._bundled import bundled_path, cellbench_lung5
from ._semi_synthetic import thin_into_batches
from ._simulate import simulate_counts
from ._simulate_de import simulate_de_counts
from ._simulate_fields import simulate_fields

__all__ = [
    "bundled_path",
    "cellbench_lung5",
    "simulate_counts",
    "simulate_de_counts",
    "simulate_fields",
    "thin_into_batches",
]
