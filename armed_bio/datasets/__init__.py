"""Bundled real datasets and simulators."""

from ._bundled import bundled_path, cellbench_lung5
from ._simulate import simulate_counts

__all__ = ["bundled_path", "cellbench_lung5", "simulate_counts"]
