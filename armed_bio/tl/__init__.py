"""Scanpy-style tools."""

from ._armed import armed
from ._gene_grid import gene_grid, grid_shape
from ._umap import umap

__all__ = ["armed", "gene_grid", "grid_shape", "umap"]
