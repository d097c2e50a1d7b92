"""Microscopy front end and bad image input: clear errors, nothing written, AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import FAST
from skimage import io

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedImageClassifier


@pytest.fixture(scope="module")
def fields():
    return ab.datasets.simulate_fields(n_fields=4, n_batches=2, n_nuclei=12, size=(96, 96), seed=3)


@pytest.fixture
def crops(fields):
    f, b, _ = fields
    return ab.pp.crop_objects(f, batch=b, crop_size=16, progress_bar=False)


def _snapshot(adata):
    return (
        list(adata.obs.columns),
        list(adata.obsm.keys()),
        list(adata.uns.keys()),
        {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
    )


def _assert_unchanged(adata, snap):
    cols, obsm, uns, arrays = snap
    assert list(adata.obs.columns) == cols
    assert list(adata.obsm.keys()) == obsm
    assert list(adata.uns.keys()) == uns
    for k, v in arrays.items():
        np.testing.assert_array_equal(adata.obsm[k], v)


# ------------------------------------------------------------------ front end
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


def test_image_qc_features(crops):
    ab.pp.image_qc(crops)
    for name in ("brightness", "contrast", "sharpness", "snr"):
        assert f"qc_{name}_ch0" in crops.obs
        assert f"qc_{name}_ch1" in crops.obs
    assert (crops.obs["qc_brightness_ch0"] > 0).all()
    qc = ab.pp.image_qc(crops, inplace=False)
    assert qc.shape == (crops.n_obs, 8)


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


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("model_cls", [ArmedImage, ArmedImageClassifier])
def test_setup_rejects_bad_images_and_leaves_adata_unchanged(crops, model_cls):
    crops.obs["label"] = np.where(np.arange(crops.n_obs) % 2, "a", "b")
    cases = []
    three_d = crops.copy()
    three_d.obsm["image"] = three_d.obsm["image"][:, 0]
    cases.append((three_d, "rank 4", {}))
    last = crops.copy()
    last.obsm["image"] = np.ascontiguousarray(last.obsm["image"].transpose(0, 2, 3, 1))
    cases.append((last, "channels-last", {}))
    nan = crops.copy()
    nan.obsm["image"] = nan.obsm["image"].astype(np.float32)
    nan.obsm["image"][0, 0, 0, 0] = np.nan
    cases.append((nan, "NaN", {}))
    cases.append((crops.copy(), "no images under 'crops'", {"image_key": "crops"}))
    zero = crops.copy()
    zero.obsm["image"] = np.zeros((zero.n_obs, 0, 16, 16), dtype=np.uint8)
    cases.append((zero, "empty", {}))
    no_batch = crops.copy()
    cases.append((no_batch, "not_a_column", {"batch_key": "not_a_column"}))
    for adata, message, override in cases:
        snap = _snapshot(adata)
        kwargs = {"batch_key": "batch", "labels_key": "label", **override}
        with pytest.raises((ValueError, KeyError, TypeError), match=message):
            model_cls.setup_anndata(adata, **kwargs)
        _assert_unchanged(adata, snap)
    empty = crops[:0].copy()
    with pytest.raises(ValueError, match="empty|no cells|0 cells|n_obs"):
        model_cls.setup_anndata(empty, batch_key="batch", labels_key="label")


def test_classifier_requires_labels(crops):
    with pytest.raises(ValueError, match="labels_key"):
        ArmedImageClassifier.setup_anndata(crops, batch_key="batch")


def test_query_with_other_image_shape_is_rejected(crops, fields):
    adata = crops.copy()
    ArmedImage.setup_anndata(adata, batch_key="batch")
    model = ArmedImage(adata, channels=(8,), re_channels=(4,), n_latent=4)
    model.train(max_epochs=1, batch_size=32, **FAST)
    f, b, _ = fields
    other = ab.pp.crop_objects(f, batch=b, crop_size=20, progress_bar=False)
    snap = _snapshot(other)
    with pytest.raises(ValueError, match="trained on \\(2, 16, 16\\)"):
        model.get_latent_representation(other)
    with pytest.raises(ValueError, match="trained on"):
        model.write_to_adata(other)
    _assert_unchanged(other, snap)


def test_fields_of_different_dtypes_keep_every_value(fields):
    f, _, _ = fields
    bright = f[1].astype(np.uint16) * 200  # values above 255: must not wrap to uint8
    adata = ab.pp.crop_objects([f[0], bright], batch="p", crop_size=16, progress_bar=False)
    assert adata.obsm["image"].dtype == np.uint16
    assert adata.obsm["image"].max() > 255
