"""Training plans for ARMED models, and post-hoc calibration."""

from ._adaptation import AdaptationTrainingPlan, QueryMinibatches, fit_new_batches
from ._calibration import fit_temperature
from ._divergence import TrainingDivergedError
from ._trainingplan import ArmedTrainingPlan

__all__ = [
    "AdaptationTrainingPlan",
    "ArmedTrainingPlan",
    "QueryMinibatches",
    "TrainingDivergedError",
    "fit_new_batches",
    "fit_temperature",
]
