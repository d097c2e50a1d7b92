"""Training curves, with the adversary's accuracy against chance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from ._utils import finish

PANELS = (
    ("loss", ["train_loss", "validation_loss"]),
    (
        "reconstruction",
        [
            "reconstruction_loss_train",
            "reconstruction_loss_validation",
            "reconstruction_loss_fe_train",
            "reconstruction_loss_fe_validation",
        ],
    ),
    ("KL", ["kl_local_train", "kl_local_validation", "kl_global_train"]),
    (
        "accuracy",
        [
            "adversary_accuracy_train",
            "adversary_accuracy_validation",
            "re_batch_accuracy_train",
            "z_predictor_accuracy_train",
            "z_predictor_accuracy_validation",
            "label_accuracy_fe_train",
            "label_accuracy_fe_validation",
            "label_accuracy_me_train",
            "label_accuracy_me_validation",
        ],
    ),
)


def training(
    model,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Loss curves per epoch, and the adversary's batch accuracy against chance.

    The adversary tries to tell the batch from the fixed-effects latent; an accuracy near
    chance (``1 / n_batches``, dashed) means ``z_FE`` carries little batch information.
    Z-predictor and label-head accuracies are drawn when the model has them.

    Parameters
    ----------
    model
        A trained model (``model.history`` as recorded by scvi-tools).
    show, save, return_fig
        As in scanpy: ``return_fig=True`` returns the Figure; otherwise the figure is shown
        (``show=None`` follows ``scanpy.settings.autoshow``) and ``None`` is returned, or,
        with ``show=False``, its axes are. ``save`` writes it to this path (any format).
    """
    history = getattr(model, "history", None)
    if not history:
        raise ValueError(
            f"{type(model).__name__} has no training history; train it first (model.train())."
        )
    panels = [(title, [k for k in keys if k in history]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            series = pd.Series(history[key].iloc[:, 0]).astype(float)
            ax.plot(
                series.index,
                series.to_numpy(),
                lw=1.3,
                ls="--" if "validation" in key else "-",
                label=key.replace("_train", "").replace("_validation", " (val)"),
            )
        if title == "accuracy":
            n_batch = model.module.n_batch
            ax.axhline(1.0 / n_batch, color="black", ls=":", lw=1.2, label=f"chance 1/{n_batch}")
            ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6.5, frameon=False)
    return finish(fig, axes[0], show, save, return_fig)
