"""armed_bio: ARMED mixed-effects deep learning for single-cell and microscopy data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("armed_bio")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from . import datasets, metrics, model, nn, pl, tl  # noqa: E402

__all__ = ["datasets", "metrics", "model", "nn", "pl", "tl", "__version__"]
