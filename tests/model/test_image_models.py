"""Image models on crops cut by the front end from simulated fields (real training, no mocks)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST

import armed_bio as ab
from armed_bio.model import ArmedImageClassifier
from armed_bio.module import adversary_penalty


def test_classifier_learns_and_predicts_in_category_order(image_classifier, crops):
    proba = image_classifier.predict(crops, head="me", soft=True)
    assert list(proba.columns) == list(crops.obs["phenotype"].cat.categories)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    for kind in ("fe", "me"):
        acc = (
            image_classifier.predict(crops, head=kind) == crops.obs["phenotype"].to_numpy()
        ).mean()
        assert acc > 0.8, kind  # small vs large nuclei: easy once trained
    # Random slopes and intercepts were trained (the reference ME-CNN never updated them).
    assert image_classifier.module.label_head.intercept.loc.abs().sum() > 0
    assert image_classifier.module.label_head.slopes.loc.abs().sum() > 0


def test_classifier_embedding_to_obsm_and_seed_reproducible(image_classifier, crops):
    adata = crops.copy()
    image_classifier.write_to_adata(adata)
    assert adata.obsm["X_armed_fe"].shape == (adata.n_obs, 8)
    assert adata.uns["armed"]["image_shape"] == [2, 20, 20]
    again = crops.copy()
    ArmedImageClassifier.setup_anndata(again, batch_key="batch", labels_key="phenotype")
    twin = ArmedImageClassifier(again, channels=(8, 16), n_latent=8, seed=0)
    twin.train(max_epochs=15, batch_size=32, seed=0, **FAST)
    np.testing.assert_allclose(
        twin.get_latent_representation(crops),
        image_classifier.get_latent_representation(crops),
        atol=1e-5,
    )


def test_unseen_plate_takes_the_z_predictor_route(image_classifier, crops, caplog):
    query = crops.copy()
    query.obs["batch"] = "plate_never_seen"
    with caplog.at_level(logging.INFO, logger="armed_bio"):
        proba = image_classifier.predict(query, head="me", soft=True)
    assert "unseen batches ['plate_never_seen']" in caplog.text
    assert np.isfinite(proba.to_numpy()).all()
    image_classifier.entropy_threshold = 0.0  # every unseen crop on Z = 0: ME equals FE
    try:
        np.testing.assert_allclose(
            image_classifier.predict(query, head="me", soft=True),
            image_classifier.predict(query, head="fe", soft=True),
            atol=1e-6,
        )
    finally:
        image_classifier.entropy_threshold = 0.5


def test_plain_cnn_has_no_adversary_and_no_random_effects(crops):
    adata = crops.copy()
    ArmedImageClassifier.setup_anndata(adata, batch_key="batch", labels_key="phenotype")
    plain = ArmedImageClassifier(adata, mode="fixed", adversary_weight=0.0, channels=(8,))
    assert not plain.module.has_adversary
    assert not plain.module.has_random_effects
    assert "plain CNN" in plain._model_summary_string
    with pytest.raises(ValueError, match="mixed-effects head needs random effects"):
        plain.predict(adata, head="me")


def test_classifier_save_load_roundtrip(image_classifier, crops, tmp_path):
    image_classifier.save(tmp_path / "m", save_anndata=True)
    loaded = ArmedImageClassifier.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.predict(crops, head="me", soft=True),
        image_classifier.predict(crops, head="me", soft=True),
        atol=1e-6,
    )
    assert float(loaded.module.z_temperature) == float(image_classifier.module.z_temperature)
    np.testing.assert_allclose(loaded.module.image_std, image_classifier.module.image_std)


def test_autoencoder_latents_and_counterfactual_images(image_autoencoder, crops):
    fe = image_autoencoder.get_latent_representation(crops, kind="fe")
    re = image_autoencoder.get_latent_representation(crops, kind="re")
    assert fe.shape == (crops.n_obs, 8)
    assert re.shape == (crops.n_obs, 8)
    cells = [0, 1, 2]
    plates = image_autoencoder.batch_categories_
    as_plate = {
        p: image_autoencoder.get_counterfactual_images(crops, batch=p, indices=cells)
        for p in plates
    }
    free = image_autoencoder.get_counterfactual_images(crops, batch=None, indices=cells)
    assert free.shape == (3, 2, 20, 20)
    assert free.dtype == np.float32
    # Plates have different illumination/contrast: their renderings differ from each other.
    assert np.abs(as_plate[plates[0]] - as_plate[plates[1]]).mean() > 0.1
    own = image_autoencoder.get_counterfactual_images(crops, indices=cells, observed=True)
    code = [plates.index(b) for b in crops.obs["batch"].iloc[cells]]
    for i, c in enumerate(code):
        np.testing.assert_allclose(own[i], as_plate[plates[c]][i], atol=1e-4)
    with pytest.raises(ValueError, match="not a batch the model knows"):
        image_autoencoder.get_counterfactual_images(crops, batch="no_such_plate")


def test_image_counterfactual_figure(image_autoencoder, crops, tmp_path):
    fig = ab.pl.image_counterfactuals(
        image_autoencoder, crops, cells=[0, 5], save=tmp_path / "cf.png", return_fig=True
    )
    # observed + one column per plate + batch-free, for each of 2 cells
    assert len(fig.axes) == 2 * (1 + len(image_autoencoder.batch_categories_) + 1)
    assert (tmp_path / "cf.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="channels must be"):
        ab.pl.image_counterfactuals(image_autoencoder, crops, cells=[0], channels=[5], show=False)


def test_adversary_penalty_signs():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([0, 1])
    term, metrics = adversary_penalty(logits, target, 2.0, "negative_ce")
    assert torch.isclose(term, -2.0 * metrics["adversary_ce"])  # the FE side *maximises* CE
    uniform, _ = adversary_penalty(torch.zeros(2, 2), target, 1.0, "confusion")
    confident, _ = adversary_penalty(logits, target, 1.0, "confusion")
    assert abs(float(uniform)) < 1e-6
    assert float(confident) > 0


def test_label_conditional_adversary(image_classifier, crops):
    module = image_classifier.module
    assert module.conditional_adversary  # labels given: on by default
    table = pd.crosstab(crops.obs["phenotype"], crops.obs["batch"], normalize="index")
    np.testing.assert_allclose(module.batch_given_label.numpy(), table.to_numpy(), atol=1e-6)
    prior = torch.tensor([[0.7, 0.2, 0.1]])
    at_prior, _ = adversary_penalty(torch.log(prior), torch.tensor([0]), 1.0, "confusion", prior)
    uniform, _ = adversary_penalty(torch.zeros(1, 3), torch.tensor([0]), 1.0, "confusion", prior)
    assert abs(float(at_prior)) < 1e-6
    assert float(uniform) > 0


@pytest.mark.parametrize("upsampling", ["transposed", "nearest"])
@pytest.mark.parametrize("size", [(68, 68), (33, 47), (16, 9)])
def test_the_decoder_returns_the_image_size(upsampling, size):
    from armed_bio.nn import MixedEffectsConvDecoder

    decoder = MixedEffectsConvDecoder(8, 3, size, (8, 16, 16), n_batch=2, upsampling=upsampling)
    design = torch.eye(2)[[0, 1, 1]]
    assert decoder(torch.zeros(3, 8), design).shape == (3, 3, *size)
    assert decoder(torch.zeros(3, 8), None).shape == (3, 3, *size)
    with pytest.raises(ValueError, match="upsampling must be one of"):
        MixedEffectsConvDecoder(8, 3, size, upsampling="bilinear")


@pytest.mark.parametrize("size", [(68, 68), (33, 47), (5, 3)])
def test_the_side_branches_read_crops_average_pooled(size):
    """downsample=2: the RE encoder and Z-predictor see 2 x 2 means (edge windows partial)."""
    from armed_bio.nn import ConvClassifier, ConvEncoder
    from armed_bio.nn._conv import downsample

    torch.manual_seed(0)
    x = torch.randn(3, 2, *size)
    pooled = downsample(x, 2)
    assert pooled.shape[-2:] == tuple(-(-s // 2) for s in size)
    # The last row/column of an odd size is its own (partial) window.
    np.testing.assert_allclose(pooled[..., 0, 0], x[..., :2, :2].mean((-1, -2)), rtol=1e-6)
    np.testing.assert_allclose(
        pooled[..., -1, -1],
        x[..., -(2 - size[0] % 2) :, -(2 - size[1] % 2) :].mean((-1, -2)),
        rtol=1e-6,
    )
    design = torch.eye(2)[[0, 1, 1]]
    full = ConvEncoder(2, pooled.shape[-2:], 4, (4, 8), n_batch=2).eval()
    half = ConvEncoder(2, size, 4, (4, 8), n_batch=2, downsample=2).eval()
    half.load_state_dict(full.state_dict())  # same weights: pooling is the only difference
    torch.testing.assert_close(half(x, design)[0], full(pooled, design)[0])
    clf = ConvClassifier(2, 3, (4,), downsample=2)
    torch.testing.assert_close(clf(x), clf.out(clf.features(pooled).mean(dim=(2, 3))))
    with pytest.raises(ValueError, match="downsample must be an integer >= 1"):
        ConvClassifier(2, 3, downsample=0)


def test_a_bad_re_downsample_is_refused_naming_the_argument(crops):
    adata = crops.copy()
    ab.model.ArmedImage.setup_anndata(adata, batch_key="batch")
    before = adata.copy()
    with pytest.raises(ValueError, match="re_downsample"):
        ab.model.ArmedImage(adata, re_downsample=1.5)
    assert adata.obs.equals(before.obs)


def test_plate_swap_invariance_moves_crops_by_the_decoders_plate_effect_and_trains_the_encoder():
    """The term re-images real crops on another plate and pulls their z_FE to the original's."""
    from armed_bio.module import ArmedImageModule

    torch.manual_seed(0)
    # Without intensity jitter: with it, z_FE of the crop itself already moves between draws.
    module = ArmedImageModule(
        2,
        (20, 20),
        3,
        channels=(8, 16),
        re_channels=(8,),
        n_latent=8,
        invariance_weight=1.0,
        intensity_jitter=0.0,
    ).train()
    x = torch.randn(8, 2, 20, 20)  # already in standardised units (mean 0, s.d. 1 buffers)
    batch = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:, None]
    inference = module.inference(x, batch)
    # While the decoder renders every plate alike, a moved crop is the crop itself: no penalty.
    effects = [m for m in module.decoder.modules() if isinstance(m, ab.nn.RandomEffect)]
    with torch.no_grad():
        for effect in effects:
            effect.loc.zero_()
            effect.raw_scale.fill_(-30.0)  # posterior s.d. ~1e-6: samples at the mean
    assert module.plate_swap_invariance(inference) < 1e-8
    with torch.no_grad():  # plate 2 renders its cells otherwise: moving crops to or from it costs
        module.decoder.start_film.beta.loc[2] = 1.0
    term = module.plate_swap_invariance(inference)
    assert term.dim() == 0
    assert term > 1e-3
    term.backward()
    # Gradient into the encoder only: the decoder's plate effect is the fixed "what a plate
    # changes", and the decoder and its random effects must not learn to erase it.
    assert module.encoder.out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.decoder.parameters())
    assert all(p.grad is None for p in module.re_encoder.parameters())
    # Training with it logs the term; a negative weight is refused.
    tensors = {"image": x, "batch": batch.float(), "labels": torch.zeros(8, 1)}
    _, _, loss = module(tensors, loss_kwargs={})
    assert "plate_swap_invariance" in loss.extra_metrics
    module.invariance_weight = 0.0
    _, _, loss = module(tensors, loss_kwargs={})
    assert "plate_swap_invariance" not in loss.extra_metrics
    with pytest.raises(ValueError, match="invariance_weight"):
        ArmedImageModule(2, (20, 20), 3, invariance_weight=-1.0)


def test_intensity_jitter_moves_only_what_the_fe_encoder_sees():
    """Each crop gets one gain and offset per channel; the target and the RE path keep it."""
    from armed_bio.module import ArmedImageModule
    from armed_bio.module._image_base import jitter_intensity

    torch.manual_seed(0)
    x = torch.randn(6, 2, 10, 10)
    assert torch.equal(jitter_intensity(x, 0.0), x)
    y = jitter_intensity(x, 0.5)
    # An affine map per crop and channel: a least-squares fit of y on x is exact.
    for i in range(6):
        for c in range(2):
            a = torch.stack([x[i, c].flatten(), torch.ones(100)], 1)
            coef = torch.linalg.lstsq(a, y[i, c].flatten()[:, None]).solution
            assert torch.allclose(a @ coef, y[i, c].flatten()[:, None], atol=1e-4)
            assert coef[0] > 0  # a gain, never a flip of the contrast
    gains = torch.stack([(y[i, 0] - y[i, 0].mean()).std() / x[i, 0].std() for i in range(6)])
    assert gains.std() > 0.05  # crops differ from each other
    module = ArmedImageModule(
        2,
        (20, 20),
        3,
        channels=(8, 16),
        re_channels=(8,),
        n_latent=8,
        augment=False,
        intensity_jitter=0.5,
    )
    x = torch.randn(8, 2, 20, 20)  # standardised units already (mean 0, s.d. 1 buffers)
    batch = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:, None]
    module.train()
    jittered = module.inference(x, batch)
    torch.manual_seed(1)
    again = module.inference(x, batch)
    assert torch.equal(jittered["x_in"], x)  # the reconstruction target is the crop as imaged
    assert not torch.allclose(jittered["z"], again["z"])  # the FE encoder saw other jitters
    module.eval()
    plain = module.inference(x, batch)
    assert torch.equal(plain["z"], module.inference(x, batch)["z"])  # none at inference
    with pytest.raises(ValueError, match="intensity_jitter"):
        ArmedImageModule(2, (20, 20), 3, intensity_jitter=-0.1)


def test_focus_jitter_blurs_or_sharpens_only_what_the_fe_encoder_sees():
    """Positive strengths smooth a crop, negative ones sharpen it; flat crops are unmoved."""
    from armed_bio.module import ArmedImageModule
    from armed_bio.module._image_base import _gaussian_blur, jitter_focus

    torch.manual_seed(0)
    x = torch.randn(64, 2, 12, 12)
    assert torch.equal(jitter_focus(x, 0.0), x)
    flat = torch.full((3, 2, 12, 12), 1.7)
    assert torch.allclose(_gaussian_blur(flat), flat)  # the kernel sums to one
    assert torch.allclose(jitter_focus(flat, 1.0), flat)
    y = jitter_focus(x, 0.5)
    # The change is along blur(x) - x, with one strength per crop and channel.
    d = _gaussian_blur(x) - x
    a = ((y - x) * d).flatten(2).sum(-1) / d.pow(2).flatten(2).sum(-1)
    assert torch.allclose(y, x + a[..., None, None] * d, atol=1e-5)
    assert (a > 0).any()  # blurred crops
    assert (a < 0).any()  # and sharpened ones
    # Roughness (neighbour differences) falls where a > 0 and rises where a < 0.
    rough_x = (x[..., 1:] - x[..., :-1]).pow(2).flatten(2).mean(-1)
    rough_y = (y[..., 1:] - y[..., :-1]).pow(2).flatten(2).mean(-1)
    assert torch.all((rough_y < rough_x)[a > 0.1])
    assert torch.all((rough_y > rough_x)[a < -0.1])
    module = ArmedImageModule(
        2,
        (20, 20),
        3,
        channels=(8, 16),
        re_channels=(8,),
        n_latent=8,
        augment=False,
        intensity_jitter=0.0,
        focus_jitter=0.5,
    )
    x = torch.randn(8, 2, 20, 20)
    batch = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:, None]
    module.train()
    jittered = module.inference(x, batch)
    torch.manual_seed(1)
    assert torch.equal(jittered["x_in"], x)  # the target stays the crop as imaged
    assert not torch.allclose(jittered["z"], module.inference(x, batch)["z"])
    module.eval()
    assert torch.equal(module.inference(x, batch)["z"], module.inference(x, batch)["z"])
    with pytest.raises(ValueError, match="focus_jitter"):
        ArmedImageModule(2, (20, 20), 3, focus_jitter=-0.1)


def test_autoencoders_saved_by_0_4_load_with_their_decoder(crops, tmp_path):
    """0.4 files have no decoder_upsampling: they load with the decoder they were trained with."""
    adata = crops.copy()
    ab.model.ArmedImage.setup_anndata(adata, batch_key="batch")
    model = ab.model.ArmedImage(
        adata, channels=(8, 16), re_channels=(8,), n_latent=8, decoder_upsampling="nearest"
    )
    model.train(max_epochs=1, batch_size=32, seed=0, **FAST)
    loaded = _saved_without(model, "decoder_upsampling", tmp_path, adata)  # as 0.4 wrote it
    assert loaded.module.decoder.upsampling == "nearest"
    np.testing.assert_array_equal(
        loaded.get_counterfactual_images(indices=[0, 1]),
        model.get_counterfactual_images(indices=[0, 1]),
    )
    assert ab.model.ArmedImage(adata).module.decoder.upsampling == "transposed"


def test_autoencoders_saved_by_0_5_load_with_the_0_5_defaults(crops, tmp_path):
    """0.5 files lack the clustered adversary, centring and decoder width: they load as trained."""
    from armed_bio.module import ArmedImageModule

    adata = crops.copy()
    ab.model.ArmedImage.setup_anndata(adata, batch_key="batch")
    small = {"channels": (8, 16), "re_channels": (8,), "n_latent": 8}
    model = ab.model.ArmedImage(adata, **{**ArmedImageModule.defaults_before_0_6, **small})
    model.train(max_epochs=1, batch_size=32, seed=0, **FAST)
    model.save(tmp_path / "m")
    attrs_file = tmp_path / "m" / "attributes.json"
    attrs = json.loads(attrs_file.read_text())
    # As 0.5 wrote it: every argument of 0.5 recorded, the later ones absent.
    kwargs = attrs["init_params_"]["kwargs"]["module_kwargs"]
    for name in ("adversary_clusters", "centre_random_effects", "decoder_width", "re_downsample"):
        del attrs["module_arguments_"][name]
        kwargs.pop(name)
    attrs_file.write_text(json.dumps(attrs))
    loaded_model = ab.model.ArmedImage.load(tmp_path / "m", adata=adata)
    loaded = loaded_model.module
    assert loaded.fe_reconstruction_weight == 1.0
    assert not loaded.centre_random_effects
    assert not hasattr(loaded, "cluster_centres")
    assert loaded.decoder.start_shape[0] == 16  # the decoder mirrors channels=(8, 16)
    assert loaded.re_encoder.downsample == loaded.z_predictor.downsample == 1
    np.testing.assert_array_equal(
        loaded_model.get_latent_representation(), model.get_latent_representation()
    )
    new = ab.model.ArmedImage(adata, **small).module
    assert new.fe_reconstruction_weight == 0.0
    assert new.centre_random_effects
    assert new.cluster_centres.shape[0] == 5
    assert new.decoder.start_shape[0] == 12  # decoder_width=0.75 of 16
    assert new.re_encoder.downsample == new.z_predictor.downsample == 2


def test_autoencoders_saved_before_0_10_load_with_their_32_latent_dimensions(crops, tmp_path):
    """n_latent became 8 in 0.10: files that never named it load with the 32 they had."""
    from armed_bio.module import ArmedImageModule

    adata = crops.copy()
    ab.model.ArmedImage.setup_anndata(adata, batch_key="batch")
    small = {"channels": (8, 16), "re_channels": (8,)}
    # The behaviour of a file from before 0.3 (only the given arguments recorded).
    old = {
        **ArmedImageModule.added_arguments,
        **ArmedImageModule.defaults_before_0_3,
        **ArmedImageModule.defaults_before_0_10,
    }
    model = ab.model.ArmedImage(adata, **small, **old)
    model.train(max_epochs=1, batch_size=32, seed=0, **FAST)
    model.save(tmp_path / "m")
    attrs_file = tmp_path / "m" / "attributes.json"
    attrs = json.loads(attrs_file.read_text())
    latent = model.get_latent_representation()
    assert latent.shape[1] == 32
    # As 0.3-0.9 wrote it: every module argument recorded, n_latent not given by the user.
    for name in old:
        attrs["init_params_"]["kwargs"]["module_kwargs"].pop(name)
    attrs_file.write_text(json.dumps(attrs))
    loaded = ab.model.ArmedImage.load(tmp_path / "m", adata=adata)
    assert loaded.module.n_latent == 32
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    # As 0.1-0.2 wrote it: the given arguments only.
    del attrs["module_arguments_"]
    attrs_file.write_text(json.dumps(attrs))
    loaded = ab.model.ArmedImage.load(tmp_path / "m", adata=adata)
    assert loaded.module.n_latent == 32
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    assert ab.model.ArmedImage(adata, **small).module.n_latent == 8
    defaults_0_9 = ab.model.ArmedImage(adata, **small, **ArmedImageModule.defaults_before_0_10)
    assert defaults_0_9.module.n_latent == 32


def test_autoencoders_saved_by_0_10_load_without_intensity_jitter(crops, tmp_path):
    """intensity_jitter became 0.5 in 0.11: 0.10 files, which lack it, load with none.

    They lack focus_jitter (added after 0.11.0) too, and load without it.
    """
    from armed_bio.module import ArmedImageModule

    adata = crops.copy()
    ab.model.ArmedImage.setup_anndata(adata, batch_key="batch")
    small = {"channels": (8, 16), "re_channels": (8,)}
    assert ab.model.ArmedImage(adata, **small).module.intensity_jitter == 0.5
    model = ab.model.ArmedImage(adata, **small, **ArmedImageModule.defaults_before_0_11)
    model.train(max_epochs=1, batch_size=32, seed=0, **FAST)
    # As 0.10 wrote it.
    loaded = _saved_without(model, ("intensity_jitter", "focus_jitter"), tmp_path, adata)
    assert loaded.module.intensity_jitter == 0.0
    assert loaded.module.focus_jitter == 0.0
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def _saved_without(model, arguments: str | tuple[str, ...], tmp_path, adata):
    """Save ``model`` as a release before ``arguments`` existed wrote it, and load it back."""
    model.save(tmp_path / "m")
    attrs_file = tmp_path / "m" / "attributes.json"
    attrs = json.loads(attrs_file.read_text())
    for argument in (arguments,) if isinstance(arguments, str) else arguments:
        del attrs["module_arguments_"][argument]
        attrs["init_params_"]["kwargs"]["module_kwargs"].pop(argument, None)  # only if given
    attrs_file.write_text(json.dumps(attrs))
    return type(model).load(tmp_path / "m", adata=adata)
