"""Per-batch random-effect magnitudes and the most batch-affected genes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ._utils import category_colors, finish


def random_effects(
    model,
    n_genes: int = 20,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """How strongly each batch departs from the fixed effects, and where.

    Left: per batch and random-effect layer, the root-mean-square of the posterior means
    (the size of the batch's effect), with the mean posterior s.d. as a whisker (how sure
    the model is). Right: the ``n_genes`` genes whose output offset (a per-batch log fold
    change) varies most between batches, each batch's posterior mean +/- 1 s.d.

    Parameters
    ----------
    model
        A trained :class:`~armed_bio.model.ArmedRNA` with random effects.
    n_genes
        Number of most batch-affected genes on the right.
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).
    """
    if not hasattr(model, "get_random_effects"):
        raise TypeError(f"{type(model).__name__} has no random effects to plot.")
    table = model.get_random_effects()  # raises for mode="fixed"
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, got {n_genes}.")
    layers = list(table["layer"].cat.categories)
    batches = list(table["batch"].cat.categories)
    grouped = table.groupby(["layer", "batch"], observed=True)
    rms = grouped["mean"].apply(lambda m: float(np.sqrt(np.mean(m**2))))
    mean_sd = grouped["sd"].mean()
    colors = category_colors(len(batches))

    top = list(model.get_gene_batch_variance().index[:n_genes])
    offsets = table[(table["layer"] == model.module.output_offset_layer) & table["unit"].isin(top)]
    fig, (ax_l, ax_r) = plt.subplots(
        1,
        2,
        figsize=(12, max(3.5, 0.25 * max(len(layers) * 1.3, n_genes) + 1.5)),
        gridspec_kw={"width_ratios": [1.1, 1.0]},
    )
    width = 0.8 / len(batches)
    y = np.arange(len(layers))
    for k, batch in enumerate(batches):
        vals = [rms.get((layer, batch), np.nan) for layer in layers]
        sds = [mean_sd.get((layer, batch), np.nan) for layer in layers]
        ax_l.barh(
            y + (k - (len(batches) - 1) / 2) * width,
            vals,
            height=width,
            xerr=sds,
            color=colors[k],
            label=str(batch),
            error_kw={"lw": 0.8, "capsize": 1.5},
        )
    ax_l.set_yticks(y, layers, fontsize=8)
    ax_l.invert_yaxis()
    ax_l.set_xlabel("RMS posterior mean (whisker: mean posterior s.d.)")
    ax_l.set_title("Random-effect size per batch and layer", fontsize=10)
    ax_l.legend(fontsize=7, frameon=False, loc="lower right")

    yg = np.arange(len(top))
    for k, batch in enumerate(batches):
        sub = offsets[offsets["batch"] == batch].set_index("unit").reindex(top)
        jitter = (k - (len(batches) - 1) / 2) * 0.6 / len(batches)
        ax_r.errorbar(
            sub["mean"].to_numpy(),
            yg + jitter,
            xerr=sub["sd"].to_numpy(),
            fmt="o",
            ms=3.5,
            color=colors[k],
            lw=0.8,
            label=str(batch),
        )
    ax_r.axvline(0, color="0.5", lw=0.8)
    ax_r.set_yticks(yg, top, fontsize=8)
    ax_r.invert_yaxis()
    ax_r.set_xlabel("output offset (log fold change vs fixed effects), mean +/- s.d.")
    ax_r.set_title(f"{len(top)} most batch-affected genes", fontsize=10)
    return finish(fig, np.array([ax_l, ax_r]), show, save, return_fig)
