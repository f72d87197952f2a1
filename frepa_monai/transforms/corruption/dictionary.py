"""Dictionary twins of Frepa's corruptions (:mod:`.array`).

Each twin owns one array transform and, MONAI's default, draws once per call: every key gets the same mask and
noise (images of one shape), unless ``shared_draw=False`` gives each key a draw of its own.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform

from frepa_monai.transforms.corruption.array import FrepaCorrupt, FrequencyDualMask, HistogramEqualizedMask
from frepa_monai.transforms.hessian import HessianFilter
from frepa_monai.transforms.utils import named

__all__ = ["FrequencyDualMaskd", "HistogramEqualizedMaskd", "FrepaCorruptd"]


class _Twin(RandomizableTransform, MapTransform):
    """A dictionary twin of one random array transform: ``prob`` decides per call, the transform draws."""

    def __init__(self, keys: KeysCollection, transform, prob: float, shared_draw: bool, allow_missing_keys: bool):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform
        self.shared_draw = shared_draw

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def keys_to_transform(self, data: dict):
        """The keys of ``data`` to transform this call (none when ``prob`` says so), the shared draw made."""
        self.randomize(None)
        if not self._do_transform:
            return []
        if self.shared_draw:
            self.transform.randomize(None)
        return list(self.key_iterator(data))


class FrequencyDualMaskd(_Twin):
    """Dictionary twin of :class:`~frepa_monai.transforms.FrequencyDualMask`.

    Args:
        keys: images to corrupt.
        patch_size, cutoff_ratio, sigma_ratio, high_freq_mask, low_freq_perturb, spatial_dims, literal_sizes: see
            :class:`~frepa_monai.transforms.FrequencyDualMask`.
        prob: probability of corrupting at all (one draw per call).
        shared_draw: one mask and noise draw for every key (default) or one per key.
        allow_missing_keys: skip keys that are not in the data.
    """

    backend = FrequencyDualMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int = 16,
        cutoff_ratio: float = 0.2,
        sigma_ratio: float = 0.002,
        high_freq_mask: bool = True,
        low_freq_perturb: bool = True,
        spatial_dims: int | None = None,
        literal_sizes: bool = False,
        prob: float = 1.0,
        shared_draw: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = FrequencyDualMask(
            patch_size, cutoff_ratio, sigma_ratio, high_freq_mask, low_freq_perturb, spatial_dims, 1.0, literal_sizes
        )
        super().__init__(keys, transform, prob, shared_draw, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.keys_to_transform(d):
            d[key] = named(key, self.transform, d[key], randomize=not self.shared_draw)
        return d


class HistogramEqualizedMaskd(_Twin):
    """Dictionary twin of :class:`~frepa_monai.transforms.HistogramEqualizedMask`; writes the pixel mask of the
    first key to ``mask_key``.

    Args:
        keys: images to mask.
        patch_size, mask_ratio, fill, spatial_dims, literal_sizes: see
            :class:`~frepa_monai.transforms.HistogramEqualizedMask`.
        mask_key: where the boolean pixel mask ``(1, *spatial)`` (``True`` = masked) is stored; ``None``: nowhere.
        prob: probability of masking at all (one draw per call).
        shared_draw: one choice of patches and one noise draw for every key (default) or one per key.
        allow_missing_keys: skip keys that are not in the data.
    """

    backend = HistogramEqualizedMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | None = None,
        mask_ratio: float = 0.7,
        fill: str = "histogram",
        spatial_dims: int | None = None,
        literal_sizes: bool = False,
        mask_key: str | None = "mask",
        prob: float = 1.0,
        shared_draw: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = HistogramEqualizedMask(patch_size, mask_ratio, fill, spatial_dims, 1.0, literal_sizes)
        super().__init__(keys, transform, prob, shared_draw, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for i, key in enumerate(self.keys_to_transform(d)):
            d[key], mask = named(key, self.transform.call_with_mask, d[key], randomize=not self.shared_draw)
            if i == 0 and self.mask_key is not None:
                d[self.mask_key] = mask
        return d


class FrepaCorruptd(_Twin):
    """Dictionary twin of :class:`~frepa_monai.transforms.FrepaCorrupt`, with the Hessian channel of the raw image.

    Writes ``<key>_view<i>`` (corrupted image), ``<mask_key>_view<i>`` (bool pixel mask ``(1, *spatial)``),
    ``<strategy_key>_view<i>`` (:data:`~frepa_monai.transforms.FREQUENCY` or
    :data:`~frepa_monai.transforms.IMAGE`) for ``i = 1 .. views`` and, unless ``hessian_key`` is ``None``, the
    :class:`~frepa_monai.transforms.HessianFilter` channel of the raw image under ``hessian_key``.

    Args:
        keys: the image key (exactly one).
        views, prob_frequency, frequency_mask, image_mask, fill, high_freq_mask, low_freq_perturb, cutoff_ratio,
            sigma_ratio, frequency_patch_size, mask_ratio, image_patch_size, literal_sizes, spatial_dims: see
            :class:`~frepa_monai.transforms.FrepaCorrupt`.
        sigmas: scales of the Hessian channel.
        mask_key, strategy_key, hessian_key: output key names (``hessian_key=None``: no Hessian channel).
        allow_missing_keys: skip the key when it is not in the data.
    """

    backend = FrepaCorrupt.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        views: int = 2,
        prob_frequency: float = 0.5,
        frequency_mask: bool = True,
        image_mask: bool = True,
        fill: str = "histogram",
        high_freq_mask: bool = True,
        low_freq_perturb: bool = True,
        cutoff_ratio: float = 0.2,
        sigma_ratio: float = 0.002,
        frequency_patch_size: int = 16,
        mask_ratio: float = 0.7,
        image_patch_size: int | None = None,
        literal_sizes: bool = False,
        spatial_dims: int | None = None,
        sigmas: Sequence[float] = (1.0, 2.0, 3.0),
        mask_key: str = "mask",
        strategy_key: str = "strategy",
        hessian_key: str | None = "hessian",
        allow_missing_keys: bool = False,
    ) -> None:
        transform = FrepaCorrupt(
            views=views,
            prob_frequency=prob_frequency,
            frequency_mask=frequency_mask,
            image_mask=image_mask,
            fill=fill,
            high_freq_mask=high_freq_mask,
            low_freq_perturb=low_freq_perturb,
            cutoff_ratio=cutoff_ratio,
            sigma_ratio=sigma_ratio,
            frequency_patch_size=frequency_patch_size,
            mask_ratio=mask_ratio,
            image_patch_size=image_patch_size,
            literal_sizes=literal_sizes,
            spatial_dims=spatial_dims,
        )
        super().__init__(keys, transform, 1.0, True, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"FrepaCorruptd corrupts exactly one key, got {self.keys}.")
        self.hessian = None if hessian_key is None else HessianFilter(sigmas, spatial_dims=spatial_dims)
        self.mask_key, self.strategy_key, self.hessian_key = mask_key, strategy_key, hessian_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.keys_to_transform(d):
            views = named(key, self.transform, d[key], randomize=False)
            for i, (view, mask, strategy) in enumerate(zip(*views), start=1):
                d[f"{key}_view{i}"] = view
                d[f"{self.mask_key}_view{i}"] = mask
                d[f"{self.strategy_key}_view{i}"] = strategy
            if self.hessian is not None:
                d[self.hessian_key] = named(key, self.hessian, d[key])
        return d
