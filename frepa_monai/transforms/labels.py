"""Checks of the downstream bundles' label maps against the classes their configs declare."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from frepa_monai.transforms.utils import source_of

__all__ = ["ValidateLabel", "ValidateLabeld"]


class ValidateLabel(Transform):
    """Check a label map ``(1, *spatial)`` against the classes a config declares; returns it unchanged.

    Raises a ``ValueError`` naming the label's file when it has more than one channel, holds NaN / Inf or
    non-integer values, or values outside ``[0, num_classes)`` (e.g. a 0/255 mask where 0/1 is expected).

    Args:
        num_classes: classes of the task, background included (labels ``0 .. num_classes - 1``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        self.num_classes = int(num_classes)

    def __call__(self, label: NdarrayOrTensor, name: str = "label") -> NdarrayOrTensor:
        source = source_of(label).replace("image ", "", 1) or "(in memory) "
        x = convert_to_tensor(label, track_meta=False)
        if x.ndim < 3 or x.shape[0] != 1:
            raise ValueError(
                f"{name} {source}has shape {tuple(x.shape)}; expected one channel, (1, *spatial), of class indices."
            )
        values = torch.unique(x)
        if torch.is_floating_point(values):
            if not bool(torch.isfinite(values).all()):
                raise ValueError(f"{name} {source}contains NaN or Inf values.")
            if not bool((values == values.round()).all()):
                raise ValueError(
                    f"{name} {source}holds non-integer values {values[:8].tolist()}; expected class indices."
                )
            values = values.long()
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"{name} {source}holds classes {bad[:8].tolist()} that the config does not declare: it declares "
                f"{self.num_classes} classes (0 .. {self.num_classes - 1}); values found: {values[:12].tolist()}."
            )
        return label


class ValidateLabeld(MapTransform):
    """Dictionary twin of :class:`ValidateLabel` that also checks that each label has its image's spatial size.

    Place it right after loading, before any spatial transform. Errors name the label's file (and the image's
    for a size mismatch).

    Args:
        keys: label keys.
        num_classes: classes of the task, background included.
        image_key: the image whose spatial size each label must have; None skips the size check.
    """

    def __init__(
        self, keys: KeysCollection, num_classes: int, image_key: str | None = "image", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.validate = ValidateLabel(num_classes)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.validate(d[key], name=f"label '{key}'")
            if self.image_key is not None and self.image_key in d:
                image_size, label_size = tuple(d[self.image_key].shape[1:]), tuple(d[key].shape[1:])
                if image_size != label_size:
                    raise ValueError(
                        f"label '{key}' {source_of(d[key]).replace('image ', '', 1)}has spatial size {label_size} but "
                        f"its image {source_of(d[self.image_key]).replace('image ', '', 1)}has {image_size}; "
                        "image and label must be on the same grid."
                    )
        return d
