"""Names shared across armed_bio: modes, likelihoods and AnnData keys."""

from typing import Literal

Mode = Literal["mixed", "fixed", "random"]
Likelihood = Literal["nb", "zinb", "poisson", "gaussian"]
LatentKind = Literal["fe", "re"]

MODES: tuple[str, ...] = ("mixed", "fixed", "random")
LIKELIHOODS: tuple[str, ...] = ("nb", "zinb", "poisson", "gaussian")
COUNT_LIKELIHOODS: tuple[str, ...] = ("nb", "zinb", "poisson")

FE_OBSM_KEY = "X_armed_fe"
RE_OBSM_KEY = "X_armed_re"
UNS_KEY = "armed"

# Counts are library-normalised to this total before log1p at the encoder input.
NORMALISATION_TARGET = 1e4
UMAP_SUFFIX = (
    "_umap"  # .obsm["<embedding>_umap"]: its 2-D UMAP (tl.umap writes, pl.embeddings reads)
)
