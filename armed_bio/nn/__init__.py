"""Torch building blocks: random-effects layers, FiLM, encoders, decoders, classifiers."""

from ._networks import (
    Classifier,
    FixedEffectsEncoder,
    MixedEffectsClassifier,
    MixedEffectsDecoder,
    RandomEffectsEncoder,
)
from ._random_effects import FiLM, RandomEffect

__all__ = [
    "Classifier",
    "FiLM",
    "FixedEffectsEncoder",
    "MixedEffectsClassifier",
    "MixedEffectsDecoder",
    "RandomEffect",
    "RandomEffectsEncoder",
]
