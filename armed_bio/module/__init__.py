"""scvi-tools modules (``BaseModuleClass`` subclasses) implementing ARMED networks."""

from ._armed_cnn import ArmedCNNModule
from ._armed_image_ae import ArmedImageModule
from ._armed_vae import ArmedVAEModule
from ._base import ArmedModuleBase, RandomEffectLayer, adversary_penalty

__all__ = [
    "ArmedCNNModule",
    "ArmedImageModule",
    "ArmedModuleBase",
    "ArmedVAEModule",
    "RandomEffectLayer",
    "adversary_penalty",
]
