"""Bad image input to the image models: clear errors, nothing written, AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST, assert_unchanged, snapshot

import armed_bio as ab
from armed_bio.model import ArmedImage, ArmedImageClassifier


@pytest.mark.parametrize("model_cls", [ArmedImage, ArmedImageClassifier])
def test_setup_rejects_bad_images_and_leaves_adata_unchanged(crops16, model_cls):
    crops16.obs["label"] = np.where(np.arange(crops16.n_obs) % 2, "a", "b")
    cases = []
    three_d = crops16.copy()
    three_d.obsm["image"] = three_d.obsm["image"][:, 0]
    cases.append((three_d, "rank 4", {}))
    last = crops16.copy()
    last.obsm["image"] = np.ascontiguousarray(last.obsm["image"].transpose(0, 2, 3, 1))
    cases.append((last, "channels-last", {}))
    nan = crops16.copy()
    nan.obsm["image"] = nan.obsm["image"].astype(np.float32)
    nan.obsm["image"][0, 0, 0, 0] = np.nan
    cases.append((nan, "NaN", {}))
    cases.append((crops16.copy(), "no images under 'crops'", {"image_key": "crops"}))
    zero = crops16.copy()
    zero.obsm["image"] = np.zeros((zero.n_obs, 0, 16, 16), dtype=np.uint8)
    cases.append((zero, "empty", {}))
    no_batch = crops16.copy()
    cases.append((no_batch, "not_a_column", {"batch_key": "not_a_column"}))
    for adata, message, override in cases:
        snap = snapshot(adata)
        kwargs = {"batch_key": "batch", "labels_key": "label", **override}
        with pytest.raises((ValueError, KeyError, TypeError), match=message):
            model_cls.setup_anndata(adata, **kwargs)
        assert_unchanged(adata, snap)
    empty = crops16[:0].copy()
    with pytest.raises(ValueError, match="empty|no cells|0 cells|n_obs"):
        model_cls.setup_anndata(empty, batch_key="batch", labels_key="label")


def test_classifier_requires_labels(crops16):
    with pytest.raises(ValueError, match="labels_key"):
        ArmedImageClassifier.setup_anndata(crops16, batch_key="batch")


def test_query_with_other_image_shape_is_rejected(crops16, fields):
    adata = crops16.copy()
    ArmedImage.setup_anndata(adata, batch_key="batch")
    model = ArmedImage(adata, channels=(8,), re_channels=(4,), n_latent=4)
    model.train(max_epochs=1, batch_size=32, **FAST)
    f, b, _ = fields
    other = ab.pp.crop_objects(f, batch=b, crop_size=20, progress_bar=False)
    snap = snapshot(other)
    with pytest.raises(ValueError, match="trained on \\(2, 16, 16\\)"):
        model.get_latent_representation(other)
    with pytest.raises(ValueError, match="trained on"):
        model.write_to_adata(other)
    assert_unchanged(other, snap)
