"""Training plans for ARMED models."""

from ._trainingplan import ArmedTrainingPlan

__all__ = ["ArmedTrainingPlan"]
