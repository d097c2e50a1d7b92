"""Plots of batch effects (matplotlib; each returns its Figure)."""

from ._embeddings import embeddings

__all__ = ["embeddings"]
