"""Torch building blocks: random-effects layers, FiLM, encoders, decoders, classifiers."""

from ._conv import ConvClassifier, ConvEncoder, MixedEffectsConvDecoder, pooled_features
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
    "ConvClassifier",
    "ConvEncoder",
    "FiLM",
    "FixedEffectsEncoder",
    "MixedEffectsClassifier",
    "MixedEffectsConvDecoder",
    "MixedEffectsDecoder",
    "RandomEffect",
    "RandomEffectsEncoder",
    "pooled_features",
]
