"""Scanpy-style tools."""

from ._armed import armed

__all__ = ["armed"]
