"""Segmentation against ground truth: objects found vs objects present."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def match_objects(
    found: pd.DataFrame,
    truth: pd.DataFrame,
    max_distance: float = 5.0,
    group_by: tuple[str, ...] = ("field", "frame"),
    found_coords: tuple[str, str] = ("centroid_y", "centroid_x"),
    truth_coords: tuple[str, str] = ("y", "x"),
) -> dict[str, float]:
    """One-to-one matching of detected to true object centres, per field (and frame).

    A detection matches a true object when the optimal assignment (Hungarian, on centre
    distance) pairs them at most ``max_distance`` pixels apart.

    Parameters
    ----------
    found
        Detections, e.g. ``crop_objects(...).obs``.
    truth
        True objects, e.g. the third output of :func:`armed_bio.datasets.simulate_fields`.
    max_distance
        Largest centre distance (pixels) counted as a match.
    group_by
        Columns present in both tables that identify one image.
    found_coords, truth_coords
        Centre columns ``(y, x)`` of each table.

    Returns
    -------
    ``n_true``, ``n_found``, ``n_matched``, ``precision``, ``recall``, ``f1`` and
    ``mean_distance`` of the matches.
    """
    keys = list(group_by)
    for name, table, coords in (("found", found, found_coords), ("truth", truth, truth_coords)):
        missing = [c for c in keys + list(coords) if c not in table.columns]
        if missing:
            raise KeyError(f"{name} lacks columns {missing}.")
    f_groups = {k: g for k, g in found.groupby(keys, observed=True)}
    matched, dists = 0, []
    for key, t in truth.groupby(keys, observed=True):
        g = f_groups.get(key)
        if g is None or g.empty:
            continue
        d = cdist(t[list(truth_coords)].to_numpy(float), g[list(found_coords)].to_numpy(float))
        rows, cols = linear_sum_assignment(d)
        ok = d[rows, cols] <= max_distance
        matched += int(ok.sum())
        dists.extend(d[rows, cols][ok].tolist())
    n_true, n_found = len(truth), len(found)
    precision = matched / n_found if n_found else 0.0
    recall = matched / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n_true": n_true,
        "n_found": n_found,
        "n_matched": matched,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_distance": float(np.mean(dists)) if dists else float("nan"),
    }
