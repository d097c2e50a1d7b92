"""The module interface the models use: encode, decode, classify, random-effect layers, KL."""

from __future__ import annotations

import torch

from armed_bio.module import ArmedImageModule, ArmedVAEModule
from armed_bio.nn import RandomEffect


def _counts(n_cells=6, n_genes=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n_cells, n_genes), 3.0), generator=gen)


def test_encode_and_decode_match_inference_and_generative():
    torch.manual_seed(0)
    module = ArmedVAEModule(n_input=12, n_batch=3, n_labels=2).eval()
    x = _counts()
    batch = torch.tensor([[0], [1], [2], [0], [1], [2]])
    with torch.no_grad():
        inf = module.inference(x, batch)
        gen = module.generative(inf["z"], inf["library"], inf["design"])
        torch.testing.assert_close(module.encode_fe(x), inf["z"])
        torch.testing.assert_close(module.encode_re(x, inf["design"]), inf["z_re"])
        torch.testing.assert_close(module.decode(inf["z"], None), torch.softmax(gen["eta_fe"], -1))
        torch.testing.assert_close(
            module.decode(inf["z"], inf["design"]), torch.softmax(gen["eta"], -1)
        )
        fe, me = module.classify(inf["z"], inf["design"])
    assert fe.shape == me.shape == (6, 2)


def test_random_effect_layers_name_every_layer_and_its_units():
    module = ArmedVAEModule(n_input=12, n_batch=3, n_labels=2)
    layers = module.random_effect_layers()
    every = {n for n, m in module.named_modules() if isinstance(m, RandomEffect)}
    assert set(layers) == every
    assert layers[module.output_offset_layer].units == "gene"
    assert layers[module.output_scale_layer].units == "gene"
    assert layers["label_head.intercept"].units == "label"
    assert layers["decoder.films.0.gamma"].units == "hidden"
    image = ArmedImageModule(n_channels=2, image_size=(16, 16), n_batch=3, channels=(8,))
    assert image.random_effect_layers()[image.output_offset_layer].units == "channel"


def test_one_kl_loop_sums_every_random_effect():
    module = ArmedVAEModule(n_input=12, n_batch=3, n_labels=2)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, RandomEffect):
                m.loc.normal_()
    total = sum(e.layer.kl_divergence() for e in module.random_effect_layers().values())
    torch.testing.assert_close(module.random_effects_kl(), total)
    fixed = ArmedVAEModule(n_input=12, n_batch=3, mode="fixed")
    assert float(fixed.random_effects_kl()) == 0.0
