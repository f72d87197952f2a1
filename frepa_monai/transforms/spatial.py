"""The spatial layout of a loaded image: a DICOM slice, which MONAI's ITK reader loads as a volume one voxel deep,
made the 2D image it is."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, SqueezeDim, Transform

__all__ = ["AsSpatialDims", "AsSpatialDimsd"]


class AsSpatialDims(Transform):
    """Drop trailing spatial dimensions of size 1 beyond ``spatial_dims``: ``(C, H, W, 1)`` -> ``(C, H, W)``, as a
    single DICOM slice loads. Other images are returned unchanged (a real volume stays a volume, for the input
    checks to name it). Uses MONAI's ``SqueezeDim``, so the affine of a ``MetaTensor`` follows.

    Args:
        spatial_dims: the spatial dimensions the bundle takes.
    """

    backend = SqueezeDim.backend

    def __init__(self, spatial_dims: int = 2) -> None:
        self.spatial_dims = int(spatial_dims)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        while img.ndim - 1 > self.spatial_dims and img.shape[-1] == 1:
            img = SqueezeDim(dim=img.ndim - 1)(img)
        return img


class AsSpatialDimsd(MapTransform):
    """Dictionary twin of :class:`AsSpatialDims` (``keys``: the images and labels; ``spatial_dims``: as there)."""

    backend = AsSpatialDims.backend

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.as_spatial_dims = AsSpatialDims(spatial_dims)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.as_spatial_dims(d[key])
        return d
