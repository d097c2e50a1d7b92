"""Segmentation against ground truth: objects found vs objects present."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def detection_scores(n_true: int, n_found: int, n_matched: int) -> dict[str, float]:
    """Counts, precision, recall and F1 of a one-to-one matching of found to true objects."""
    precision = n_matched / n_found if n_found else 0.0
    recall = n_matched / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n_true": n_true,
        "n_found": n_found,
        "n_matched": n_matched,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


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
    return {
        **detection_scores(len(truth), len(found), matched),
        "mean_distance": float(np.mean(dists)) if dists else float("nan"),
    }


def match_masks(
    found: np.ndarray,
    truth: np.ndarray,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """One-to-one matching of found to reference object masks by intersection over union.

    The standard instance-segmentation score (as in the Cell Tracking Challenge's SEG
    measure): a found object matches a reference object when their IoU exceeds
    ``iou_threshold`` (above 0.5 a match is necessarily unique).

    Parameters
    ----------
    found
        Label image ``(H, W)`` of the segmentation (0 = background), e.g. from
        :func:`armed_bio.pp.segment_phase_contrast`.
    truth
        Reference label image of the same shape (0 = background).
    iou_threshold
        IoU a pair must exceed to match, in [0.5, 1).

    Returns
    -------
    ``n_true``, ``n_found``, ``n_matched``, ``precision``, ``recall``, ``f1`` and
    ``mean_best_iou`` (each reference object's best IoU with any found object, averaged).
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if found.shape != truth.shape or found.ndim != 2:
        raise ValueError(
            f"found and truth must be label images of one shape (H, W); got {found.shape} "
            f"and {truth.shape}."
        )
    if not 0.5 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold must be in [0.5, 1), got {iou_threshold}.")
    f_ids, f_idx = np.unique(found, return_inverse=True)
    t_ids, t_idx = np.unique(truth, return_inverse=True)
    # Pixel counts of every (found, truth) label pair: the overlap table.
    overlap = np.zeros((len(f_ids), len(t_ids)), dtype=np.int64)
    np.add.at(overlap, (f_idx.ravel(), t_idx.ravel()), 1)
    union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
    iou = overlap / np.maximum(union, 1)
    iou = iou[f_ids != 0][:, t_ids != 0]
    n_found, n_true = iou.shape
    return {
        **detection_scores(n_true, n_found, int((iou > iou_threshold).sum())),
        "mean_best_iou": float(iou.max(0).mean()) if n_true and n_found else 0.0,
    }
