"""The microscopy front end: reading fields, finding nuclei, cutting crops, QC."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import io

import armed_bio as ab


def test_front_end_finds_every_simulated_nucleus(fields):
    f, b, truth = fields
    adata = ab.pp.crop_objects(f, batch=b, crop_size=16, progress_bar=False)
    scores = ab.metrics.match_objects(adata.obs, truth, max_distance=3.0)
    assert scores["recall"] == 1.0
    assert scores["precision"] == 1.0
    assert adata.obsm["image"].shape == (adata.n_obs, 2, 16, 16)
    assert adata.obsm["image"].dtype == np.uint8
    assert {"area", "eccentricity", "intensity_mean_ch0"} <= set(adata.var_names)
    assert list(adata.obs["batch"].cat.categories) == ["batch_0", "batch_1"]
    # Large nuclei have larger measured areas than small ones.
    assert adata.X[:, list(adata.var_names).index("area")].max() > 150


def test_time_lapse_keeps_frames(fields):
    f, b, truth = ab.datasets.simulate_fields(
        n_fields=2, n_nuclei=8, size=(80, 80), n_frames=3, seed=1
    )
    assert f[0].shape == (3, 2, 80, 80)
    adata = ab.pp.crop_objects(f, batch=b, crop_size=16, progress_bar=False)
    assert sorted(adata.obs["frame"].unique()) == [0, 1, 2]
    assert ab.metrics.match_objects(adata.obs, truth, 3.0)["recall"] == 1.0


def test_reads_tiff_and_png_paths(fields, tmp_path):
    f, b, truth = fields
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, f[0])  # (C, H, W)
    png = tmp_path / "b.png"
    io.imsave(png, f[1][0], check_contrast=False)  # single channel
    adata = ab.pp.crop_objects([tif], batch="p1", crop_size=16, progress_bar=False)
    assert adata.obs["field"].unique().tolist() == ["a.tif"]
    n0 = int((truth["field"] == "field_0").sum())
    assert adata.n_obs == n0
    gray = ab.pp.crop_objects([png], batch="p1", crop_size=16, progress_bar=False)
    assert gray.obsm["image"].shape[1] == 1


def test_border_objects_are_padded_and_flagged_not_dropped():
    field = np.zeros((1, 40, 40), dtype=np.uint8)
    field[0, 1:7, 1:7] = 200  # a nucleus in the corner
    field[0, 18:26, 18:26] = 200
    adata = ab.pp.crop_objects([field], batch="p", crop_size=16, progress_bar=False, min_size=5)
    assert adata.n_obs == 2
    assert adata.obs["touches_border"].tolist().count(True) == 1


def test_image_qc_features(crops16):
    ab.pp.image_qc(crops16)
    for name in ("brightness", "contrast", "sharpness", "snr"):
        assert f"qc_{name}_ch0" in crops16.obs
        assert f"qc_{name}_ch1" in crops16.obs
    assert (crops16.obs["qc_brightness_ch0"] > 0).all()
    qc = ab.pp.image_qc(crops16, inplace=False)
    assert qc.shape == (crops16.n_obs, 8)


def test_front_end_bad_input(tmp_path, fields):
    f, b, _ = fields
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ab.pp.crop_objects([tmp_path / "missing.tif"], batch="p", progress_bar=False)
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(ValueError, match="Could not read"):
        ab.pp.crop_objects([bad], batch="p", progress_bar=False)
    with pytest.raises(ValueError, match="batch is required"):
        ab.pp.crop_objects(f, progress_bar=False)
    with pytest.raises(ValueError, match="4 fields"):
        ab.pp.crop_objects(f, batch=["a", "b"], progress_bar=False)
    with pytest.raises(ValueError, match="empty"):
        ab.pp.crop_objects([np.zeros((2, 0, 5))], batch="p", progress_bar=False)
    nan_field = f[0].astype(np.float32)
    nan_field[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ab.pp.crop_objects([nan_field], batch="p", progress_bar=False)
    with pytest.raises(ValueError, match="expected \\(H, W\\)"):
        ab.pp.crop_objects([np.zeros((1, 1, 2, 8, 8))], batch="p", progress_bar=False)
    with pytest.raises(ValueError, match="channels"):
        ab.pp.crop_objects([f[0], f[1][:1]], batch="p", progress_bar=False)


def test_fields_of_different_dtypes_keep_every_value(fields):
    f, _, _ = fields
    bright = f[1].astype(np.uint16) * 200  # values above 255: must not wrap to uint8
    adata = ab.pp.crop_objects([f[0], bright], batch="p", crop_size=16, progress_bar=False)
    assert adata.obsm["image"].dtype == np.uint16
    assert adata.obsm["image"].max() > 255
