"""What every plot shares: its ending (save, show, return; scanpy style), colours, cells."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def finish(
    fig: Figure,
    axes: Any,
    show: bool | None,
    save: str | Path | None,
    return_fig: bool,
    tight: bool = True,
) -> Any:
    """End a plot as scanpy does: save it, then return the figure, show it, or return its axes.

    ``save`` (any matplotlib format) is always honoured. ``return_fig=True`` returns the
    Figure; otherwise ``show`` (``None``: ``scanpy.settings.autoshow``) calls ``plt.show()``
    and returns ``None``, and ``show=False`` returns the axes drawn on.
    """
    if tight:
        fig.tight_layout()
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if return_fig:
        return fig
    if sc.settings.autoshow if show is None else show:
        plt.show()
        return None
    return axes


def one_panel(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes, bool]:
    """The figure and axes to draw one panel on: ``ax``'s, or new ones (and whether new)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax, True
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}.")
    return ax.figure, ax, False


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
