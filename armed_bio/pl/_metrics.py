"""A compact embeddings x metrics comparison figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._utils import finish, one_panel

TIDY_COLUMNS = {"embedding", "metric", "value"}


def _wide(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
    """Embeddings x metrics, and each metric's type when the table is scib's tidy form."""
    if TIDY_COLUMNS <= set(table.columns):
        wide = table.pivot(index="embedding", columns="metric", values="value")
        order = list(dict.fromkeys(table["metric"]))
        wide = wide.loc[list(dict.fromkeys(table["embedding"])), order]
        types = None
        if "metric_type" in table.columns:
            types = table.drop_duplicates("metric").set_index("metric")["metric_type"][order]
        return wide, types
    numeric = table.select_dtypes("number")
    if numeric.shape[1] == 0:
        raise ValueError(
            "metrics() needs numeric scores: a table from armed_bio.metrics.cluster_scores "
            "(embeddings x metrics) or armed_bio.metrics.scib (tidy)."
        )
    return numeric, None


def metrics(
    table: pd.DataFrame,
    lower_is_better: list[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Scores of several embeddings side by side: a heatmap coloured by rank within metric.

    Each column is coloured by the embeddings' rank, from worst (light) to best (dark), so
    metrics on different scales compare at a glance; the cells print the raw values.

    Parameters
    ----------
    table
        :func:`armed_bio.metrics.cluster_scores` output (embeddings x metrics) or
        :func:`armed_bio.metrics.scib` output (tidy; aggregate scores are outlined).
    lower_is_better
        Metrics where lower is better. Default: the ``*_batch`` columns of
        ``cluster_scores`` (batch separation should be low); none for scib.
    ax
        Axes to draw on (default: a new figure sized to the table).
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).
    """
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise ValueError("metrics() needs a non-empty DataFrame of scores.")
    wide, types = _wide(table)
    if lower_is_better is None:
        lower_is_better = [c for c in wide.columns if str(c).endswith("_batch")]
    unknown = [c for c in lower_is_better if c not in wide.columns]
    if unknown:
        raise KeyError(f"lower_is_better names {unknown}, not columns of the table.")
    values = wide.to_numpy(dtype=float)
    # Colour by rank, not by value: one outlying embedding must not flatten the others.
    ranks = pd.DataFrame(values).rank(axis=0, method="average").to_numpy()
    goodness = (ranks - 1.0) / max(len(wide) - 1, 1)
    flip = np.array([c in lower_is_better for c in wide.columns])
    goodness[:, flip] = 1.0 - goodness[:, flip]
    fig, ax, new = one_panel(ax, (1.0 * wide.shape[1] + 2.5, 0.5 * wide.shape[0] + 1.8))
    ax.imshow(goodness, cmap="Blues", vmin=-0.15, vmax=1.15, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(
            j,
            i,
            f"{v:.3g}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if goodness[i, j] > 0.6 else "black",
        )
    labels = [f"{c} \u2193" if c in lower_is_better else str(c) for c in wide.columns]
    ax.set_xticks(range(wide.shape[1]), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(wide.shape[0]), wide.index, fontsize=8)
    if types is not None:
        for j, t in enumerate(types):
            if t == "Aggregate score":
                ax.add_patch(
                    plt.Rectangle((j - 0.5, -0.5), 1, wide.shape[0], fill=False, lw=1.5, ec="black")
                )
    ax.set_title(
        "Scores per embedding (colour: rank within each metric, dark = best; "
        "\u2193 lower is better)",
        fontsize=9,
    )
    return finish(fig, ax, show, save, return_fig, tight=new)
