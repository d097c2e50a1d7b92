"""What every plot does at the end: save, show, return the figure (scanpy style)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure


def finish(fig: Figure, show: bool, save: str | Path | None, tight: bool = True) -> Figure:
    """Lay out ``fig``, save it to ``save`` (any matplotlib format), show it if asked."""
    if tight:
        fig.tight_layout()
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def category_colors(n: int) -> list:
    """``n`` distinct colours (tab10, then tab20, then a continuous map)."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / max(n - 1, 1)) for i in range(n)]


def cell_positions(adata: AnnData, cells) -> np.ndarray:
    """Positions of ``cells`` (obs names or integer positions) in ``adata``."""
    cells = [cells] if isinstance(cells, str | int | np.integer) else list(cells)
    if not cells:
        raise ValueError("No cells given; pass obs names or integer positions, e.g. cells=[0, 1].")
    if all(isinstance(c, int | np.integer) for c in cells):
        positions = np.asarray(cells, dtype=int)
        bad = positions[(positions < -adata.n_obs) | (positions >= adata.n_obs)]
        if bad.size:
            raise IndexError(
                f"cell positions {bad[:5].tolist()} are out of range for {adata.n_obs} cells."
            )
        return positions % adata.n_obs
    positions = adata.obs_names.get_indexer([str(c) for c in cells])
    if (positions < 0).any():
        missing = [c for c, p in zip(cells, positions, strict=True) if p < 0]
        raise KeyError(f"cells {missing[:5]} are not in adata.obs_names.")
    return positions


@contextmanager
def quiet_routes() -> Iterator[None]:
    """Silence armed_bio's per-call route lines while a plot makes many small calls."""
    logger = logging.getLogger("armed_bio")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
