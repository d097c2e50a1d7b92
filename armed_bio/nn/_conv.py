"""Convolutional encoders, decoder and Z-predictor of the ARMED image models.

Every block is ``conv -> GroupNorm -> [FiLM random effect] -> SiLU``. GroupNorm, not
BatchNorm: outputs do not depend on which cells share a minibatch (counterfactual images of one
cell are the same whatever else is decoded with it) and batches of one image work. Blocks halve
the spatial size with stride 2; the decoder upsamples back to the exact encoder sizes, so any
image size and channel count works (no 256 x 256 limit).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._random_effects import FiLM, RandomEffect

#: How the decoder upsamples (see :class:`MixedEffectsConvDecoder`).
UPSAMPLING = ("transposed", "nearest")


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _check_channels(channels: tuple[int, ...]) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if not channels or any(c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive integers, got {channels}.")
    return channels


class ConvEncoder(nn.Module):
    """Strided conv encoder ``image -> latent`` that also returns every block's feature maps.

    Parameters
    ----------
    n_channels
        Image channels.
    image_size
        ``(H, W)`` of the input.
    n_latent
        Size of the output vector.
    channels
        Output channels of each stride-2 block.
    n_batch
        ``> 0`` puts a FiLM random effect after every normalisation (the random-effects
        encoder); ``0`` gives a plain fixed-effects backbone.
    prior_sd
        Prior s.d. of the FiLM random effects.
    downsample
        Average-pool the input by this factor first (``1``: full resolution). A quarter of
        the multiply-adds at ``2``; enough for a side branch that reads plate-wide
        intensity, contrast and illumination (the random-effects encoder).
    """

    def __init__(
        self,
        n_channels: int,
        image_size: tuple[int, int],
        n_latent: int,
        channels: tuple[int, ...] = (16, 32, 64, 64),
        n_batch: int = 0,
        prior_sd: float = 0.25,
        downsample: int = 1,
    ):
        super().__init__()
        channels = _check_channels(channels)
        self.downsample = _check_downsample(downsample)
        image_size = downsampled_size(image_size, self.downsample)
        dims = (n_channels, *channels)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(a, b, 3, stride=2, padding=1)
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
        self.norms = nn.ModuleList([nn.GroupNorm(_groups(c), c) for c in channels])
        self.films = (
            nn.ModuleList([FiLM(n_batch, c, prior_sd) for c in channels]) if n_batch > 0 else None
        )
        self.sizes = encoder_sizes(image_size, len(channels))
        h, w = self.sizes[-1]
        self.out = nn.Linear(channels[-1] * h * w, n_latent)

    def forward(
        self, x: torch.Tensor, design: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        h = downsample(x, self.downsample)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = norm(conv(h))
            if self.films is not None:
                h = self.films[i](h, design)
            h = F.silu(h)
            features.append(h)
        return self.out(h.flatten(1)), features

    def kl_divergence(self) -> torch.Tensor:
        if self.films is None:
            return torch.zeros((), device=self.out.weight.device)
        return sum(film.kl_divergence() for film in self.films)


def _check_downsample(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {factor!r}.")
    return factor


def downsampled_size(image_size: tuple[int, int], factor: int) -> tuple[int, int]:
    """``(H, W)`` after :func:`downsample` by ``factor`` (partial windows at the edge kept)."""
    return tuple(-(-int(s) // factor) for s in image_size)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool ``(batch, C, H, W)`` images by ``factor``.

    Edge windows that do not fit whole are averaged over the pixels they hold (sizes need not
    divide).
    """
    if factor == 1:
        return x
    return F.avg_pool2d(x, factor, ceil_mode=True, count_include_pad=False)


def encoder_sizes(image_size: tuple[int, int], n_blocks: int) -> list[tuple[int, int]]:
    """Spatial size after each stride-2, padding-1, 3 x 3 convolution."""
    sizes, (h, w) = [], image_size
    for _ in range(n_blocks):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


class MixedEffectsConvDecoder(nn.Module):
    """Decoder ``(z_FE, Z) -> image`` with FiLM random effects and a random per-channel output.

    Hidden blocks: upsample to the matching encoder size, ``-> GroupNorm -> FiLM(Z) -> SiLU``.
    Output: upsample to the image size and map to the image channels, then a random
    per-channel gain and offset, ``y * (1 + s(Z)) + o(Z)`` (plate-specific illumination and
    contrast). ``Z = 0`` (``design=None``) gives the fixed-effects, batch-free image;
    ``n_batch = 0`` gives a decoder without random effects. With ``centred`` random effects
    (summing to zero over the seen batches) ``Z = 0`` is the average seen plate by
    construction.

    ``upsampling="transposed"`` upsamples with a 4 x 4, stride-2 transposed convolution (the
    adjoint of the encoder's stride-2 convolutions; even kernel overlap, so no checkerboard),
    cropped to the encoder's size. ``"nearest"`` (armed_bio 0.4 and earlier) upsamples by
    nearest neighbour, then applies a 3 x 3 convolution at the finer resolution: the same
    receptive field at 2.25x the multiply-adds, and 3-4x the decoder's time in a training step
    on CPU (``benchmarks/results/image_step_profile.md``).
    """

    def __init__(
        self,
        n_latent: int,
        n_channels: int,
        image_size: tuple[int, int],
        channels: tuple[int, ...] = (16, 32, 64, 64),
        n_batch: int = 0,
        hidden_prior_sd: float = 0.25,
        output_prior_sd: float = 1.0,
        upsampling: str = "transposed",
        centred: bool = False,
    ):
        super().__init__()
        channels = _check_channels(channels)
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}.")
        self.upsampling = upsampling
        self.image_size = tuple(image_size)
        sizes = encoder_sizes(image_size, len(channels))
        # Decoder stages, deepest first: the deepest map comes from the latent, then each block
        # upsamples to the next shallower encoder size.
        self.start_shape = (channels[-1], *sizes[-1])
        self.inp = nn.Linear(n_latent, channels[-1] * sizes[-1][0] * sizes[-1][1])
        rev = channels[::-1]
        # One block per shallower encoder size; the last upsampling to full resolution feeds
        # the output conv directly (a hidden block at full size would triple the cost).
        self.targets = sizes[::-1][1:]
        outs = list(rev[1:])
        self.convs = nn.ModuleList(
            [self._upsampling_conv(a, b) for a, b in zip(rev[:-1], outs, strict=True)]
        )
        self.norms = nn.ModuleList([nn.GroupNorm(_groups(c), c) for c in outs])
        self.out = self._upsampling_conv(rev[-1], n_channels)
        self.has_random_effects = n_batch > 0
        if self.has_random_effects:
            self.start_film = FiLM(n_batch, channels[-1], hidden_prior_sd, centred)
            self.films = nn.ModuleList([FiLM(n_batch, c, hidden_prior_sd, centred) for c in outs])
            self.output_scale = RandomEffect(n_batch, n_channels, output_prior_sd, centred)
            self.output_offset = RandomEffect(n_batch, n_channels, output_prior_sd, centred)

    def forward(self, z: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        use_re = self.has_random_effects and design is not None
        h = self.inp(z).view(-1, *self.start_shape)
        if use_re:
            h = self.start_film(h, design)
        h = F.silu(h)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = norm(self._upsample(conv, h, self.targets[i]))
            if use_re:
                h = self.films[i](h, design)
            h = F.silu(h)
        y = self._upsample(self.out, h, self.image_size)
        if use_re:
            gain = self.output_scale(design)[:, :, None, None]
            offset = self.output_offset(design)[:, :, None, None]
            y = y * (1.0 + gain) + offset
        return y

    def _upsampling_conv(self, n_in: int, n_out: int) -> nn.Module:
        if self.upsampling == "transposed":
            return nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1)
        return nn.Conv2d(n_in, n_out, 3, padding=1)

    def _upsample(self, conv: nn.Module, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``h`` brought to ``size`` by ``conv``.

        A transposed conv doubles the size, then the result is cropped (each encoder size is
        ``ceil(previous / 2)``); otherwise nearest upsampling, then the conv.
        """
        if self.upsampling == "transposed":
            return conv(h)[:, :, : size[0], : size[1]]
        return conv(F.interpolate(h, size=size, mode="nearest"))

    def kl_divergence(self) -> torch.Tensor:
        if not self.has_random_effects:
            return torch.zeros((), device=self.out.weight.device)
        kl = self.output_scale.kl_divergence() + self.output_offset.kl_divergence()
        kl = kl + self.start_film.kl_divergence()
        return kl + sum(film.kl_divergence() for film in self.films)


class ConvClassifier(nn.Module):
    """Small CNN ``image -> logits`` (the Z-predictor of the image models).

    ``downsample`` average-pools the input by that factor first (see :class:`ConvEncoder`);
    the weights do not depend on it (the head reads globally pooled features).
    """

    def __init__(
        self,
        n_channels: int,
        n_classes: int,
        channels: tuple[int, ...] = (8, 16, 32),
        downsample: int = 1,
    ):
        super().__init__()
        self.downsample = _check_downsample(downsample)
        layers: list[nn.Module] = []
        d = n_channels
        for c in _check_channels(channels):
            layers += [
                nn.Conv2d(d, c, 3, stride=2, padding=1),
                nn.GroupNorm(_groups(c), c),
                nn.SiLU(),
            ]
            d = c
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(downsample(x, self.downsample)).mean(dim=(2, 3)))


def pooled_features(features: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled feature maps of every block, with ``z``: the adversary's view.

    Batch effects live at several scales (illumination gradients at coarse scales, noise and
    blur at fine ones), so the adversary sees every block, as in ARMED.
    """
    return torch.cat([f.mean(dim=(2, 3)) for f in features] + [z], dim=-1)
