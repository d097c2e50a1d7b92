"""Preprocessing: the uncorrected embedding (microscopy front end to come)."""

from ._pca import log_pca

__all__ = ["log_pca"]
