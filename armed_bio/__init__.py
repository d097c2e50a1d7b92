"""armed_bio: ARMED mixed-effects deep learning for single-cell and microscopy data."""

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("armed_bio")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

# Route and progress messages go to stderr at INFO, like scvi-tools' own logger; silence them
# with logging.getLogger("armed_bio").setLevel(logging.WARNING).
_logger = logging.getLogger("armed_bio")
if not _logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("armed_bio: %(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False

from . import datasets, metrics, model, nn, pl, pp, tl  # noqa: E402

__all__ = ["datasets", "metrics", "model", "nn", "pl", "pp", "tl", "__version__"]
