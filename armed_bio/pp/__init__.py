"""Preprocessing: the uncorrected embedding and the microscopy front end."""

from ._microscopy import (
    crop_objects,
    image_qc,
    read_field,
    segment_nuclei,
    segment_phase_contrast,
)
from ._pca import log_pca

__all__ = [
    "crop_objects",
    "image_qc",
    "log_pca",
    "read_field",
    "segment_nuclei",
    "segment_phase_contrast",
]
