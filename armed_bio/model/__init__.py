"""User-facing ARMED models (scvi-tools ``BaseModelClass`` subclasses)."""

from ._armed_image import ArmedImage
from ._armed_image_classifier import ArmedImageClassifier
from ._armed_rna import ArmedRNA

__all__ = ["ArmedImage", "ArmedImageClassifier", "ArmedRNA"]
