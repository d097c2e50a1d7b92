"""Training plans for ARMED models, and post-hoc calibration."""

from ._calibration import fit_temperature
from ._trainingplan import ArmedTrainingPlan

__all__ = ["ArmedTrainingPlan", "fit_temperature"]
