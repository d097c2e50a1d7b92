"""What the ARMED image modules share: per-channel standardisation and augmentation."""

from __future__ import annotations

import torch
from scvi.module.base import auto_move_data

from .._arguments import NON_NEGATIVE
from ..nn import ConvClassifier, pooled_features
from ._base import ArmedModuleBase

IMAGE_MODES: tuple[str, ...] = ("mixed", "fixed")


def random_dihedral(x: torch.Tensor) -> torch.Tensor:
    """Per-image random horizontal/vertical flips and, for square images, a transpose.

    Together they draw uniformly from the 8 symmetries of the square (4 for rectangles).
    The result is contiguous: ``torch.where`` keeps the transposed view's strides, and every
    convolution, normalisation and pixel loss downstream then ran on a column-major layout
    (about 8 % of the autoencoder's training epoch on CPU, 0.7 -> 0.8 in the CHANGELOG).
    """
    n = x.shape[0]
    for dim in (-1, -2):
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(dim), x)
    if x.shape[-1] == x.shape[-2]:
        swap = torch.rand(n, device=x.device) < 0.5
        x = torch.where(swap[:, None, None, None], x.transpose(-1, -2), x)
    return x.contiguous()


def jitter_intensity(x: torch.Tensor, sd: float) -> torch.Tensor:
    """Standardised crops under a random per-crop, per-channel gain and offset.

    ``x * exp(sd * e1) + sd * e2`` with ``e1, e2 ~ N(0, 1)``; ``sd = 0`` returns ``x``. A
    plate's or movie's illumination and exposure move the whole crop's intensity; seen
    through this jitter only, the FE encoder cannot tell one crop's intensity level from
    another's, and the decoder takes the plate's level from its random effects.
    """
    if sd <= 0:
        return x
    shape = (x.shape[0], x.shape[1], 1, 1)
    gain = torch.exp(sd * torch.randn(shape, device=x.device, dtype=x.dtype))
    return x * gain + sd * torch.randn(shape, device=x.device, dtype=x.dtype)


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """Depthwise 5x5 Gaussian blur (sigma 1) with reflect padding; shape is kept."""
    t = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    g = torch.exp(-0.5 * t**2)
    g = g / g.sum()
    c = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(c, 1, 5, 5)
    # Reflect padding needs the crop to be larger than the pad on each side.
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode=mode)
    return torch.nn.functional.conv2d(padded, kernel, groups=c)


def jitter_focus(x: torch.Tensor, sd: float) -> torch.Tensor:
    """Crops under a random per-crop, per-channel blur or sharpening.

    ``x + a * (blur(x) - x)`` with ``a ~ N(0, sd)`` and ``blur`` a fixed 5x5 Gaussian
    (sigma 1): ``a > 0`` defocuses the crop, ``a < 0`` sharpens it (unsharp masking);
    ``sd = 0`` returns ``x``. A plate's or day's focus and optics set how sharp its crops
    are; seen through this jitter, the FE encoder cannot read the plate from the sharpness.
    """
    if sd <= 0:
        return x
    a = sd * torch.randn((x.shape[0], x.shape[1], 1, 1), device=x.device, dtype=x.dtype)
    return x + a * (_gaussian_blur(x) - x)


class ArmedImageModuleBase(ArmedModuleBase):
    """Base of the image modules; see :class:`ArmedCNNModule` and :class:`ArmedImageModule`.

    Images arrive as ``(batch, C, H, W)`` tensors in their stored scale (e.g. uint8 values as
    floats) and are standardised per channel with ``image_mean``/``image_std``: buffers set from
    the training images and saved with the weights.
    """

    output_units = "channel"
    data_key = "image"

    def __init__(
        self,
        n_channels: int,
        image_size: tuple[int, int],
        n_batch: int,
        mode: str,
        n_latent: int,
        adversary_weight: float,
        adversary_objective: str,
        n_labels: int,
        classification_weight: float,
        augment: bool,
        conditional_adversary: bool,
        z_predictor_downsample: int = 1,
        intensity_jitter: float = 0.0,
        focus_jitter: float = 0.0,
    ):
        if mode not in IMAGE_MODES:
            raise ValueError(f"mode must be one of {IMAGE_MODES}, got {mode!r}.")
        if not NON_NEGATIVE[1](adversary_weight):
            raise ValueError(f"adversary_weight must be a number >= 0, got {adversary_weight!r}.")
        super().__init__(
            n_batch,
            mode,
            n_labels,
            conditional_adversary,
            adversary_objective,
            classification_weight,
        )
        self.augment = bool(augment)
        self.n_channels = n_channels
        self.image_size = tuple(int(s) for s in image_size)
        self.n_latent = n_latent
        self.adversary_weight = float(adversary_weight)
        self.intensity_jitter = float(intensity_jitter)
        self.focus_jitter = float(focus_jitter)
        self.register_buffer("image_mean", torch.zeros(n_channels))
        self.register_buffer("image_std", torch.ones(n_channels))
        # Built first: its place in the build order sets which random draws initialise it.
        if self.has_random_effects:
            self._add_z_predictor(
                ConvClassifier(n_channels, n_batch, downsample=z_predictor_downsample)
            )

    @property
    def has_adversary(self) -> bool:
        """Whether an adversary removes the batch from ``z_FE`` (``adversary_weight > 0``)."""
        return self.adversary_weight > 0

    def _normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Per-channel standardised images (and no library size)."""
        return (x - self.image_mean[:, None, None]) / self.image_std[:, None, None], None

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        """Back from standardised units to the stored image scale."""
        return y * self.image_std[:, None, None] + self.image_mean[:, None, None]

    def adversary_input(self, inference_outputs: dict) -> torch.Tensor:
        """Pooled feature maps of every backbone block and ``z_FE`` (and the label)."""
        h = pooled_features(inference_outputs["features"], inference_outputs["z"])
        return self.with_label(h, inference_outputs)

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None,
        design: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode images ``x``: ``z_FE``, feature maps, design ``Z`` (and ``z_RE``).

        In training, with ``augment``, each crop is randomly flipped and (when square) rotated
        by a multiple of 90 degrees first: a cell has no preferred orientation. The
        autoencoder reconstructs the augmented crop, so input and target stay paired. With
        ``intensity_jitter``, the FE encoder alone sees each crop under a random gain and
        offset (:func:`jitter_intensity`) and, with ``focus_jitter``, a random blur or
        sharpening (:func:`jitter_focus`); the RE encoder, the Z-predictor and the target keep
        the crop as imaged.
        """
        if self.training and self.augment:
            x = random_dihedral(x)
        x_in, _ = self._normalise(x)
        x_fe = x_in
        if self.training:
            x_fe = jitter_focus(jitter_intensity(x_fe, self.intensity_jitter), self.focus_jitter)
        z, features = self.encoder(x_fe)
        out = self._encoded(z, x_in, design, batch_index, labels, features=features)
        if self.has_random_encoder:
            out["z_re"] = self.re_encoder(x_in, out["design"])[0]
        return out
