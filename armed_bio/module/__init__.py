"""scvi-tools modules (``BaseModuleClass`` subclasses) implementing ARMED networks."""

from ._armed_vae import ArmedVAEModule

__all__ = ["ArmedVAEModule"]
