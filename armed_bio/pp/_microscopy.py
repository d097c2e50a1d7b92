"""Microscopy front end (scikit-image): whole fields of view -> single-cell crops in AnnData.

``crop_objects`` segments nuclei in each field (smoothing, Otsu threshold, distance-transform
watershed to split touching nuclei), cuts a fixed-size crop centred on every object, measures
its morphology with ``regionprops_table`` and returns an AnnData ready for
:class:`armed_bio.model.ArmedImage` / :class:`~armed_bio.model.ArmedImageClassifier`.
``image_qc`` adds per-crop quality features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import feature, filters, measure, morphology, segmentation
from tqdm.auto import tqdm

from .._validation import check_anndata, check_images

MORPHOLOGY = (
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "extent",
    "major_axis_length",
    "minor_axis_length",
    "orientation",
)


def without_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its connected objects of fewer than ``min_size`` pixels.

    Written out rather than ``morphology.remove_small_objects``, whose arguments changed
    between scikit-image versions.
    """
    objects = measure.label(mask)
    keep = np.bincount(objects.ravel()) >= min_size
    keep[0] = False
    return keep[objects]


def segment_nuclei(
    image: np.ndarray,
    channel: int = 0,
    sigma: float = 1.0,
    min_size: int = 20,
    min_distance: int = 4,
) -> np.ndarray:
    """Label nuclei in one field: Gaussian smoothing, Otsu threshold, watershed split.

    Parameters
    ----------
    image
        ``(C, H, W)`` or ``(H, W)`` field.
    channel
        Nuclear (DNA) channel of a multi-channel field.
    sigma
        Gaussian smoothing in pixels before thresholding.
    min_size
        Objects smaller than this many pixels are removed (debris, noise).
    min_distance
        Minimum distance in pixels between the centres of two touching nuclei.

    Returns
    -------
    Integer label image ``(H, W)``; 0 is background.
    """
    plane = np.asarray(image[channel] if image.ndim == 3 else image, dtype=np.float32)
    smooth = filters.gaussian(plane, sigma=sigma, preserve_range=True)
    if smooth.max() == smooth.min():
        return np.zeros(plane.shape, dtype=np.int32)
    mask = smooth > filters.threshold_otsu(smooth)
    mask = without_small_objects(mask, min_size)
    blobs = measure.label(mask)
    distance = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(
        distance, min_distance=min_distance, labels=blobs, exclude_border=False
    )
    markers = np.zeros(plane.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Blobs without a peak (flat plateaus) still get one marker each, at their centroid.
    marked = np.zeros(blobs.max() + 1, dtype=bool)
    marked[blobs[markers > 0]] = True
    next_marker = len(peaks) + 1
    for region in measure.regionprops(blobs):
        if not marked[region.label]:
            y, x = (int(round(c)) for c in region.centroid)
            markers[y, x] = next_marker
            next_marker += 1
    return segmentation.watershed(-distance, markers, mask=mask).astype(np.int32)


def segment_phase_contrast(
    image: np.ndarray,
    channel: int = 0,
    sigma: float = 1.0,
    window: int = 9,
    closing_radius: int = 9,
    opening_radius: int = 2,
    min_size: int = 600,
) -> np.ndarray:
    """Label whole cells in one phase-contrast (or bright-field) field.

    Phase contrast shows cells as texture (bright halos and dark bodies on a flat
    background), not as bright objects, so an intensity threshold fails. The local standard
    deviation in a ``window`` x ``window`` neighbourhood is high on cells; Otsu's threshold on
    it, a closing, hole filling and an opening give one mask per cell.

    Parameters
    ----------
    image
        ``(C, H, W)`` or ``(H, W)`` field.
    channel
        Channel of a multi-channel field.
    sigma
        Gaussian smoothing in pixels before the local standard deviation.
    window
        Side in pixels of the neighbourhood of the local standard deviation.
    closing_radius, opening_radius
        Radii in pixels of the disks that close gaps inside cells and then remove thin debris.
    min_size
        Objects smaller than this many pixels are removed.

    Returns
    -------
    Integer label image ``(H, W)``; 0 is background.
    """
    for name, value in (("window", window), ("min_size", min_size)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"segment_phase_contrast: {name} must be a positive integer.")
    plane = np.asarray(image[channel] if image.ndim == 3 else image, dtype=np.float32)
    smooth = filters.gaussian(plane, sigma=sigma, preserve_range=True)
    mean = ndi.uniform_filter(smooth, window)
    texture = np.sqrt(np.clip(ndi.uniform_filter(smooth**2, window) - mean**2, 0, None))
    if texture.max() == texture.min():
        return np.zeros(plane.shape, dtype=np.int32)
    mask = texture > filters.threshold_otsu(texture)
    mask = ndi.binary_closing(mask, morphology.disk(closing_radius))
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_opening(mask, morphology.disk(opening_radius))
    return measure.label(without_small_objects(mask, min_size)).astype(np.int32)


SEGMENTERS = {"nuclei": segment_nuclei, "phase_contrast": segment_phase_contrast}


def read_field(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF/PNG field as ``(C, H, W)``, ``(T, C, H, W)`` or ``(H, W)``.

    Files stored channels-last (RGB PNG/TIFF, shape ``(H, W, 3)``) are transposed to
    channels-first.
    """
    from skimage import io

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Field image {str(path)!r} does not exist. Check the path.")
    try:
        image = np.asarray(io.imread(path))
    except Exception as err:  # any reader failure: name the file and the reason
        raise ValueError(
            f"Could not read {str(path)!r} as an image ({type(err).__name__}: {err}). Give a "
            "TIFF or PNG file, or pass the array itself."
        ) from err
    if image.ndim == 3 and image.shape[-1] <= 4 < image.shape[0]:
        image = np.moveaxis(image, -1, 0)
    return image


def _as_frames(field: np.ndarray, name: str) -> np.ndarray:
    """``(T, C, H, W)`` view of a field given as ``(H, W)``, ``(C, H, W)`` or ``(T, C, H, W)``."""
    if field.ndim == 2:
        return field[None, None]
    if field.ndim == 3:
        return field[None]
    if field.ndim == 4:
        return field
    raise ValueError(
        f"Field {name} has shape {field.shape}; expected (H, W), (C, H, W) or a time-lapse "
        "(T, C, H, W)."
    )


def _check_field(field, name: str) -> np.ndarray:
    if not isinstance(field, np.ndarray):
        raise TypeError(f"Field {name} is a {type(field).__name__}; give arrays or file paths.")
    if field.size == 0:
        raise ValueError(f"Field {name} is empty (shape {field.shape}).")
    if not np.issubdtype(field.dtype, np.number) or field.dtype == bool:
        raise TypeError(f"Field {name} has dtype {field.dtype}; expected numbers.")
    if np.issubdtype(field.dtype, np.floating) and not np.isfinite(field).all():
        raise ValueError(f"Field {name} contains NaN or infinite pixels; repair them first.")
    return field


def crop_objects(
    fields: Sequence[np.ndarray | str | os.PathLike],
    batch: Sequence | str | int | None = None,
    crop_size: int = 64,
    channel: int = 0,
    field_names: Sequence[str] | None = None,
    image_key: str = "image",
    method: str = "nuclei",
    progress_bar: bool = True,
    **segment_kwargs,
) -> ad.AnnData:
    """Segment every field, crop each object and measure it: one AnnData row per object.

    Parameters
    ----------
    fields
        Fields of view: arrays ``(H, W)``, ``(C, H, W)`` or time-lapses ``(T, C, H, W)``, or
        paths to TIFF/PNG files. All fields need the same channel count.
    batch
        Batch (plate, imaging day) of each field, or one value for all. Required: ARMED models
        the batch.
    crop_size
        Side of the square crop centred on each object's centroid. Crops that reach past the
        field edge are zero-padded and flagged in ``obs["touches_border"]`` (not dropped).
    channel
        Channel used for segmentation (nuclei).
    field_names
        Names of the fields (default: file names, or ``field_0``, ...).
    image_key
        ``.obsm`` key of the crops.
    method
        ``"nuclei"``: fluorescent nuclei (:func:`segment_nuclei`); ``"phase_contrast"``: whole
        cells in phase-contrast or bright-field fields (:func:`segment_phase_contrast`).
    progress_bar
        Show a progress bar over fields.
    **segment_kwargs
        Passed to the segmenter of ``method`` (e.g. ``sigma``, ``min_size``).

    Returns
    -------
    AnnData with ``.obsm[image_key]`` ``(n, C, crop, crop)`` in the fields' dtype (the common
    type that holds every field's values when they differ), morphology
    and per-channel mean intensity in ``.X``, and ``obs`` columns ``field``, ``batch``,
    ``frame``, ``object``, ``centroid_y``, ``centroid_x``, ``touches_border``.
    """
    if isinstance(fields, np.ndarray | str | os.PathLike):
        raise TypeError("fields must be a list of fields (arrays or paths), not a single one.")
    fields = list(fields)
    if not fields:
        raise ValueError("No fields given.")
    if method not in SEGMENTERS:
        raise ValueError(f"method must be one of {sorted(SEGMENTERS)}, got {method!r}.")
    segment = SEGMENTERS[method]
    if batch is None:
        raise ValueError(
            "batch is required: give the batch (plate, imaging day) of each field, e.g. "
            "batch=['plate1', 'plate1', 'plate2'], or one value for all fields."
        )
    batches = (
        list(batch)
        if isinstance(batch, list | tuple | np.ndarray | pd.Series)
        else ([batch] * len(fields))
    )
    if len(batches) != len(fields):
        raise ValueError(f"batch has {len(batches)} values for {len(fields)} fields.")
    if pd.isna(pd.Series(batches, dtype=object)).any():
        raise ValueError("batch has missing values; every field needs a batch.")
    if not isinstance(crop_size, int | np.integer) or crop_size < 4:
        raise ValueError(f"crop_size must be an integer >= 4, got {crop_size!r}.")
    names = (
        list(field_names)
        if field_names is not None
        else [
            Path(f).name if isinstance(f, str | os.PathLike) else f"field_{i}"
            for i, f in enumerate(fields)
        ]
    )
    if len(names) != len(fields):
        raise ValueError(f"field_names has {len(names)} names for {len(fields)} fields.")
    for f, name in zip(fields, names, strict=True):  # fail before any work on a missing file
        if isinstance(f, str | os.PathLike) and not Path(f).exists():
            raise FileNotFoundError(f"Field image {str(f)!r} ({name}) does not exist.")

    crops, rows, feats, dtypes = [], [], [], []
    n_channels = None
    half = crop_size // 2
    for f, name, b in tqdm(
        list(zip(fields, names, batches, strict=True)), desc="fields", disable=not progress_bar
    ):
        field = read_field(f) if isinstance(f, str | os.PathLike) else f
        frames = _as_frames(_check_field(field, name), name)
        dtypes.append(frames.dtype)
        if n_channels is None:
            n_channels = frames.shape[1]
            if not 0 <= channel < n_channels:
                raise ValueError(f"channel={channel} but the fields have {n_channels} channels.")
        elif frames.shape[1] != n_channels:
            raise ValueError(
                f"Field {name} has {frames.shape[1]} channels; earlier fields have {n_channels}."
            )
        for t, frame in enumerate(frames):
            labels = segment(frame, channel, **segment_kwargs)
            props = measure.regionprops_table(
                labels,
                intensity_image=np.moveaxis(frame, 0, -1),
                properties=("label", "centroid", *MORPHOLOGY, "intensity_mean"),
            )
            padded = np.pad(frame, ((0, 0), (half, half + 1), (half, half + 1)))
            h, w = frame.shape[1:]
            for i, lab in enumerate(props["label"]):
                cy, cx = props["centroid-0"][i], props["centroid-1"][i]
                y0, x0 = int(round(cy)) - half, int(round(cx)) - half
                crops.append(
                    padded[:, y0 + half : y0 + half + crop_size, x0 + half : x0 + half + crop_size]
                )
                rows.append(
                    {
                        "field": name,
                        "batch": b,
                        "frame": t,
                        "object": int(lab),
                        "centroid_y": float(cy),
                        "centroid_x": float(cx),
                        "touches_border": bool(
                            y0 < 0 or x0 < 0 or y0 + crop_size > h or x0 + crop_size > w
                        ),
                    }
                )
                feats.append(
                    [props[m][i] for m in MORPHOLOGY]
                    + [props[f"intensity_mean-{c}"][i] for c in range(n_channels)]
                )
    columns = list(MORPHOLOGY) + [f"intensity_mean_ch{c}" for c in range(n_channels)]
    obs = pd.DataFrame(
        rows,
        columns=["field", "batch", "frame", "object", "centroid_y", "centroid_x", "touches_border"],
    )
    obs.index = [f"{r['field']}:t{r['frame']}:{r['object']}" for r in rows]
    for col in ("field", "batch"):
        obs[col] = obs[col].astype(str).astype("category")
    x = np.asarray(feats, dtype=np.float32).reshape(len(rows), len(columns))
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=columns))
    dtype = np.result_type(*dtypes)  # fields of different dtypes: the one that holds them all
    adata.obsm[image_key] = (
        np.stack(crops).astype(dtype, copy=False)
        if crops
        else np.zeros((0, n_channels, crop_size, crop_size), dtype=dtype)
    )
    adata.uns["crop_objects"] = {
        "crop_size": int(crop_size),
        "channel": int(channel),
        "method": method,
        "n_fields": len(fields),
    }
    return adata


def image_qc(adata: ad.AnnData, image_key: str = "image", inplace: bool = True):
    """Per-crop, per-channel image quality features.

    ``qc_brightness_ch{c}`` (mean), ``qc_contrast_ch{c}`` (s.d.), ``qc_sharpness_ch{c}``
    (variance of the Laplacian: low for blurred crops) and ``qc_snr_ch{c}`` (mean of the
    brighter Otsu class over the s.d. of the darker one; NaN when the darker class is flat, or
    the crop is constant).

    Parameters
    ----------
    adata
        AnnData with crops ``(n, C, H, W)`` in ``.obsm[image_key]``.
    image_key
        ``.obsm`` key of the crops.
    inplace
        Add the columns to ``adata.obs`` (default); otherwise return them as a DataFrame.
    """
    check_anndata(adata)
    check_images(adata, image_key)
    images = adata.obsm[image_key]
    out: dict[str, list[float]] = {}
    for c in range(images.shape[1]):
        cols = {k: [] for k in ("brightness", "contrast", "sharpness", "snr")}
        for img in images[:, c].astype(np.float32):
            cols["brightness"].append(float(img.mean()))
            cols["contrast"].append(float(img.std()))
            cols["sharpness"].append(float(ndi.laplace(img).var()))
            if img.max() > img.min():
                fg = img > filters.threshold_otsu(img)
                noise = img[~fg].std()
                cols["snr"].append(float(img[fg].mean() / noise) if noise > 0 else np.nan)
            else:
                cols["snr"].append(np.nan)
        for k, v in cols.items():
            out[f"qc_{k}_ch{c}"] = v
    qc = pd.DataFrame(out, index=adata.obs_names)
    if not inplace:
        return qc
    for col in qc.columns:
        adata.obs[col] = qc[col].to_numpy()
    return None
