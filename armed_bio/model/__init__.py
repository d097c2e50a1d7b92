"""User-facing ARMED models (scvi-tools ``BaseModelClass`` subclasses)."""

from ._armed_rna import ArmedRNA

__all__ = ["ArmedRNA"]
