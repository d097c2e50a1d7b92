"""Tidy summaries of the random-effect posteriors of a trained model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def random_effects_table(
    module, batches: Sequence, outputs: Sequence[str], labels: Sequence[str]
) -> pd.DataFrame:
    """One row per batch x random-effect layer x unit: posterior mean and s.d.

    Units are ``outputs`` (gene names) for the decoder's per-output scale and offset, label
    names for the label head's intercept, and hidden-unit numbers (as strings) otherwise.
    """
    frames = []
    for name, (layer, units) in module.random_effect_layers().items():
        mean = layer.mean.detach().cpu().numpy()
        sd = layer.scale.detach().cpu().numpy()
        if units in ("gene", "channel"):
            unit_names = np.asarray(outputs, dtype=object)
        elif units == "label":
            unit_names = np.asarray(labels, dtype=object)
        else:
            unit_names = np.arange(layer.n_features).astype(str).astype(object)
        n_batch, n_units = mean.shape
        frames.append(
            pd.DataFrame(
                {
                    "batch": np.repeat(np.asarray(batches, dtype=object)[:n_batch], n_units),
                    "layer": name,
                    "unit": np.tile(unit_names, n_batch),
                    "mean": mean.ravel(),
                    "sd": sd.ravel(),
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table["batch"] = pd.Categorical(table["batch"], categories=list(dict.fromkeys(batches)))
    table["layer"] = pd.Categorical(table["layer"], categories=list(dict.fromkeys(table["layer"])))
    return table


def gene_batch_variance(module, batches: Sequence, genes: Sequence[str]) -> pd.DataFrame:
    """Per gene: variance across batches of the output random offset and scale, and extremes.

    The offset is a per-gene, per-batch log fold change of the expression (before the softmax
    over genes), so ``offset_variance`` ranks genes by how much batches shift them.
    """
    layers = module.random_effect_layers()
    offset = layers[module.output_offset_layer].layer.mean.detach().cpu().numpy()
    scale = layers[module.output_scale_layer].layer.mean.detach().cpu().numpy()
    batches = np.asarray(batches, dtype=object)[: offset.shape[0]]
    table = pd.DataFrame(
        {
            "offset_variance": offset.var(axis=0),
            "scale_variance": scale.var(axis=0),
            "offset_max_batch": batches[offset.argmax(axis=0)],
            "offset_min_batch": batches[offset.argmin(axis=0)],
        },
        index=pd.Index(genes, name="gene"),
    )
    return table.sort_values("offset_variance", ascending=False)
