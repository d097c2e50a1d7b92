"""Simulated microscopy fields with known nuclei and known batch effects (tests, tutorials)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def simulate_fields(
    n_fields: int = 6,
    n_batches: int = 2,
    n_nuclei: int = 25,
    size: tuple[int, int] = (192, 192),
    n_channels: int = 2,
    n_frames: int | None = None,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[str], pd.DataFrame]:
    """Fluorescence fields of round nuclei with batch-specific illumination and contrast.

    Each nucleus is an elliptical blob in channel 0 (DNA) with a wider, dimmer cytoplasm
    halo in the other channels. Two phenotypes differ in nuclear size ("small" / "large").
    Each batch has its own illumination gradient (a tilted plane multiplying the field),
    contrast gain and background offset: the batch effects ARMED should remove.

    Parameters
    ----------
    n_fields
        Number of fields; assigned to batches in turn.
    n_batches
        Number of batches.
    n_nuclei
        Nuclei per field (placed without overlap).
    size
        ``(H, W)`` of each field.
    n_channels
        Channels (``>= 1``).
    n_frames
        ``None``: still fields ``(C, H, W)``. An integer: time-lapses ``(T, C, H, W)`` in which
        every nucleus drifts by a small random walk (same ``track`` across frames).
    seed
        Random seed.

    Returns
    -------
    ``(fields, batches, truth)``: uint8 fields, the batch of each field, and one row per nucleus
    and frame with ``field``, ``batch``, ``frame``, ``track``, ``y``, ``x``, ``radius`` and
    ``phenotype``.
    """
    if n_fields < 1 or n_batches < 1 or n_nuclei < 1 or n_channels < 1:
        raise ValueError("n_fields, n_batches, n_nuclei and n_channels must be >= 1.")
    if n_frames is not None and n_frames < 1:
        raise ValueError(f"n_frames must be None or >= 1, got {n_frames!r}.")
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    effects = [
        {
            "gain": rng.uniform(0.6, 1.4),
            "offset": rng.uniform(5, 30),
            "tilt": rng.uniform(-0.5, 0.5, size=2),
        }
        for _ in range(n_batches)
    ]
    fields, batches, truth = [], [], []
    t_count = 1 if n_frames is None else n_frames
    for f in range(n_fields):
        b = f % n_batches
        eff = effects[b]
        centres, radii, phenos = [], [], []
        while len(centres) < n_nuclei:
            pheno = rng.integers(2)
            r = rng.uniform(7, 9) if pheno else rng.uniform(4.5, 6)
            c = rng.uniform(r + 4, [h - r - 4, w - r - 4])
            # Gaps down to 1 pixel: some nuclei touch, so the watershed split matters.
            if all(np.hypot(*(c - o)) > r + ro + 1 for o, ro in zip(centres, radii, strict=True)):
                centres.append(c)
                radii.append(r)
                phenos.append("large" if pheno else "small")
        centres = np.array(centres)
        illum = 1 + eff["tilt"][0] * (yy / h - 0.5) + eff["tilt"][1] * (xx / w - 0.5)
        frames = []
        for t in range(t_count):
            if t:
                centres = np.clip(centres + rng.normal(0, 1.0, centres.shape), 10, [h - 10, w - 10])
            img = np.zeros((n_channels, h, w), dtype=np.float32)
            for k, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True)):
                d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
                img[0] += 180 * np.exp(-(d2**3))  # flat-topped nucleus
                for c in range(1, n_channels):
                    img[c] += 70 * np.exp(-d2 / (4.0 + c))
                truth.append(
                    {
                        "field": f"field_{f}",
                        "batch": f"batch_{b}",
                        "frame": t,
                        "track": k,
                        "y": float(cy),
                        "x": float(cx),
                        "radius": float(r),
                        "phenotype": phenos[k],
                    }
                )
            img = img * illum * eff["gain"] + eff["offset"]
            img += rng.normal(0, 4, img.shape)
            frames.append(np.clip(img, 0, 255).astype(np.uint8))
        fields.append(frames[0] if n_frames is None else np.stack(frames))
        batches.append(f"batch_{b}")
    return fields, batches, pd.DataFrame(truth)
