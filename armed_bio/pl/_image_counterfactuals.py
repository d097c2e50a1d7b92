"""Counterfactual image grids: each cell as imaged on every plate, and batch-free."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData

from .._validation import check_anndata
from ._utils import cell_positions, finish, quiet_routes


def to_rgb(images: np.ndarray, channels: Sequence[int], lo: np.ndarray, hi: np.ndarray):
    """``(n, C, H, W)`` -> ``(n, H, W, 3)`` in [0, 1]: up to three channels as R, G, B.

    One channel is shown in grey. ``lo``/``hi`` (per chosen channel) fix the display range, so
    every panel of a figure shares one intensity scale and plate differences stay visible.
    """
    picked = images[:, list(channels)].astype(np.float32)
    scaled = np.clip((picked - lo[None, :, None, None]) / (hi - lo)[None, :, None, None], 0, 1)
    if scaled.shape[1] == 1:
        scaled = np.repeat(scaled, 3, axis=1)
    elif scaled.shape[1] == 2:
        scaled = np.concatenate([scaled, np.zeros_like(scaled[:, :1])], axis=1)
    return scaled.transpose(0, 2, 3, 1)


def image_counterfactuals(
    model,
    adata: AnnData | None = None,
    cells: Sequence[int | str] | int | str = (0,),
    channels: Sequence[int] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Each cell as imaged: observed, rendered as every training plate, and batch-free.

    Parameters
    ----------
    model
        A trained :class:`armed_bio.model.ArmedImage` with random effects (``mode="mixed"``).
    adata
        AnnData with the crops; default: the model's training AnnData.
    cells
        Obs names or integer positions of the cells (one row each).
    channels
        Up to three channel indices shown as red, green, blue (one: grey); default the first
        three.
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).

    Returns
    -------
    The figure: rows are cells; columns the observed crop, the cell rendered as each plate
    (its own plate's column marked), and the fixed-effects (``Z = 0``) rendering.
    """
    if not hasattr(model, "get_counterfactual_images"):
        raise TypeError(
            f"{type(model).__name__} cannot render images; pass a trained "
            "armed_bio.model.ArmedImage."
        )
    model._require_random_effects("Counterfactual images")
    adata = model.adata if adata is None else check_anndata(adata)
    positions = cell_positions(adata, cells)
    n_channels = model.image_shape[0]
    channels = list(range(min(3, n_channels))) if channels is None else list(channels)
    if not 1 <= len(channels) <= 3 or any(not 0 <= c < n_channels for c in channels):
        raise ValueError(f"channels must be 1 to 3 indices in 0..{n_channels - 1}, got {channels}.")
    key = model.registry_["setup_args"]["image_key"]
    batch_key = model.registry_["setup_args"]["batch_key"]
    observed = np.asarray(adata.obsm[key][positions], dtype=np.float32)
    plates = list(model.batch_categories_)
    with quiet_routes():
        renders = [
            model.get_counterfactual_images(adata, batch=p, indices=positions) for p in plates
        ]
        renders.append(model.get_counterfactual_images(adata, batch=None, indices=positions))
    picked = observed[:, channels]
    lo = np.percentile(picked, 0.5, axis=(0, 2, 3))
    hi = np.maximum(np.percentile(picked, 99.5, axis=(0, 2, 3)), lo + 1e-6)
    columns = [to_rgb(observed, channels, lo, hi)] + [to_rgb(r, channels, lo, hi) for r in renders]
    titles = ["observed"] + [f"as {p}" for p in plates] + ["batch-free (FE)"]
    own = (
        adata.obs[batch_key].to_numpy()[positions]
        if batch_key in adata.obs
        else np.full(len(positions), None)
    )
    fig, axes = plt.subplots(
        len(positions),
        len(columns),
        figsize=(1.6 * len(columns), 1.7 * len(positions)),
        squeeze=False,
    )
    for i in range(len(positions)):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(col[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
            if 1 <= j <= len(plates) and plates[j - 1] == own[i]:
                for spine in ax.spines.values():  # the cell's own plate
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
        axes[i, 0].set_ylabel(f"{adata.obs_names[positions[i]][:18]}\n({own[i]})", fontsize=6)
    fig.suptitle("Counterfactual images (red frame: the plate the cell was imaged on)", fontsize=8)
    return finish(fig, axes, show, save, return_fig)
