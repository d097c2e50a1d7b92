"""What the ARMED image models share: set-up, normalisation and reading crops."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from anndata import AnnData
from scvi.data.fields import ObsmField

from .. import _validation as check
from .._chunks import iter_chunks
from ._base import ArmedModelBase

IMAGE_KEY = "image"  # registry key of the images


class ArmedImageModelBase(ArmedModelBase):
    """Base of :class:`ArmedImageClassifier` and :class:`ArmedImage` (not used directly)."""

    # Enough steps for both image models to plateau (benchmarks/results/image_bbbc021_*.md).
    _default_target_steps = 1000
    _requires_labels = False  # the classifier sets True
    _data_arguments = ("n_channels", "image_size", "n_batch", "n_labels")
    # A conv step frees and re-allocates megabytes of activations: keep them in the heap
    # (`armed_bio._malloc.heap_kept_for_training`; 20 % of an autoencoder step on CPU).
    _keep_heap_in_training = True

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        image_key: str = "image",
        batch_key: str | None = None,
        labels_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData of single-cell crops.

        Parameters
        ----------
        adata
            One row per crop.
        image_key
            ``adata.obsm`` key of the crops, shape ``(n_cells, C, H, W)``, any numeric dtype
            (uint8, uint16, float), any size and channel count.
        batch_key
            ``adata.obs`` column with the grouping modelled as a random effect (plate,
            imaging day). Required, at least two levels.
        labels_key
            ``adata.obs`` column with the phenotype labels (required for the classifier).

        All checks run before anything is written, so on error ``adata`` is unchanged.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check.check_anndata(adata)
        if cls._requires_labels and labels_key is None:
            raise ValueError(
                f"{cls.__name__} predicts labels: pass labels_key= (an adata.obs column)."
            )
        check.check_images(adata, image_key)
        field = ObsmField(IMAGE_KEY, image_key, is_count_data=False)
        cls._register(adata, field, batch_key, labels_key, setup_method_args, **kwargs)

    def __init__(self, adata: AnnData, mode: str, seed: int, module_kwargs: dict):
        """Build the module from the crops' shape and the user's arguments; fit statistics."""
        check.check_anndata(adata)
        super().__init__(adata)
        module_kwargs = self._check_module_kwargs(module_kwargs)
        key = self.registry_["setup_args"]["image_key"]
        c, h, w = self.adata.obsm[key].shape[1:]
        data = {
            "n_channels": c,
            "image_size": (h, w),
            "n_batch": self.summary_stats.n_batch,
            "n_labels": self.summary_stats.n_labels if self._has_labels else 0,
        }
        for name in ("channels", "re_channels"):
            if name in module_kwargs:
                module_kwargs[name] = tuple(module_kwargs[name])
        self._build_module(seed, data, {"mode": mode, **module_kwargs})
        self._fit_image_statistics()

    def _fit_image_statistics(self) -> None:
        """Fit the per-channel mean and s.d. of the training crops into the module's buffers.

        They are saved with the weights.
        """
        images = self.adata.obsm[self.registry_["setup_args"]["image_key"]]
        total = np.zeros(images.shape[1])
        total_sq = np.zeros(images.shape[1])
        for start in range(0, images.shape[0], 512):
            block = images[start : start + 512].astype(np.float64)
            total += block.sum(axis=(0, 2, 3))
            total_sq += (block**2).sum(axis=(0, 2, 3))
        n = images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / n
        sd = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        constant = np.flatnonzero(sd == 0)
        if constant.size:
            raise ValueError(
                f"Image channels {constant.tolist()} are constant over every training crop, so "
                "they carry no signal and cannot be standardised. Drop them."
            )
        self.module.image_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.module.image_std.copy_(torch.as_tensor(sd, dtype=torch.float32))

    # ------------------------------------------------------------------ reading crops
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` the model was trained on."""
        return (self.module.n_channels, *self.module.image_size)

    def _query_chunks(
        self, adata: AnnData, positions: np.ndarray, batch_size: int
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        key = self.registry_["setup_args"]["image_key"]
        shape = check.check_images(adata, key, positions)
        if shape != self.image_shape:
            raise ValueError(
                f"adata.obsm[{key!r}] holds images of shape {shape} (C, H, W) but the model was "
                f"trained on {self.image_shape}. Crop or resize the query to the training size "
                "(e.g. `armed_bio.pp.crop_objects(..., crop_size=...)`) with the same channels."
            )
        return iter_chunks(adata.obsm[key], positions, batch_size)

    def _saved_names(self) -> list[str]:
        return [self.registry_["setup_args"]["image_key"], *map(str, self.image_shape)]

    @classmethod
    def _check_saved_inputs(cls, adata: AnnData, saved_names: list[str]) -> None:
        key, shape = saved_names[0], tuple(int(s) for s in saved_names[1:])
        found = check.check_images(adata, key)
        if found != shape:
            raise ValueError(
                f"adata.obsm[{key!r}] holds images of shape {found}; the saved model was trained "
                f"on {shape} (C, H, W)."
            )

    def _uns_record(self, obsm_keys: dict[str, str]) -> dict:
        record = self.run_record(obsm_keys)
        record["image_shape"] = list(self.image_shape)
        record["image_mean"] = self.module.image_mean.cpu().numpy().tolist()
        record["image_std"] = self.module.image_std.cpu().numpy().tolist()
        return record
