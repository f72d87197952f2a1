"""A pass over a datalist before any epoch runs: every image a bundle would train on, or infer from, is read once
and checked, so that a bad file stops the run at once with the file named and the reason, instead of crashing
mid-run or training on meaningless data.

:func:`check_image` says what is wrong with one file, in words; :func:`check_datalist` applies it to the splits of a
training datalist (every problem in one error); :func:`check_inputs` to the files of an inference run, keeping the
good ones and recording each bad one with its reason (:class:`InputCheck`).

What is checked, per file:

- the format: a file ending of :data:`INPUT_SUFFIXES` for the bundle's number of spatial dims (or, in 3D, a DICOM
  series folder);
- that it reads, whole (a truncated ``.nii.gz`` fails here, not in the middle of an epoch);
- its dimensionality and channel count (a 4D NIfTI loads as a volume of many channels);
- its values: none NaN or infinite, and not constant (a constant image scales to all zeros);
- its shape: the smallest side after the bundle's resizing (longest side to ``resize_to``) at least ``min_size``
  pixels, and the aspect ratio of its physical extent at most ``max_aspect_ratio`` (a 2000x16 strip, a single
  slice given as a volume).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = ["INPUT_SUFFIXES", "check_image", "check_datalist", "check_inputs", "InputCheck"]

logger = logging.getLogger(__name__)

INPUT_SUFFIXES = {
    2: (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm"),
    3: (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"),
}
"""The image files the bundles take, per number of spatial dims: everything MONAI's ``LoadImage`` reads as one 2D
image, or as one 3D volume (a DICOM file is a slice: 2D only; a 3D DICOM series is given as its folder)."""


@lru_cache(maxsize=1)
def _loader():
    from monai.transforms import LoadImage  # the bundles' reader, as their preprocessing runs it

    return LoadImage(image_only=True, ensure_channel_first=True)


def _supported(path: Path, spatial_dims: int) -> bool:
    if path.is_dir():
        return spatial_dims == 3 and any(p.suffix.lower() == ".dcm" for p in path.iterdir())
    return path.name.lower().endswith(INPUT_SUFFIXES[spatial_dims])


def check_image(
    path: str,
    spatial_dims: int,
    channels: Sequence[int] | None = (1, 3, 4),
    resize_to: int | None = None,
    min_size: int = 8,
    max_aspect_ratio: float = 10.0,
    check_values: bool = True,
) -> str | None:
    """What is wrong with image file ``path`` for a bundle, in words, or ``None`` when nothing is.

    Args:
        path: the file (or, in 3D, DICOM series folder).
        spatial_dims: 2 or 3, the bundle's images.
        channels: the channel counts the bundle takes (``None``: any).
        resize_to: the longest side after the bundle's resizing, ``None`` when it does not resize.
        min_size: the smallest side the model can use, after resizing.
        max_aspect_ratio: the largest ratio of the longest to the shortest side of the physical extent.
        check_values: check for NaN / infinite and constant values (images; not labels).
    """
    import torch

    file = Path(path)
    if not file.exists():
        return "does not exist"
    if not _supported(file, spatial_dims):
        return (
            f"is not a format the {spatial_dims}D bundles take (they take {', '.join(INPUT_SUFFIXES[spatial_dims])}"
            + (", or a DICOM series folder" if spatial_dims == 3 else "")
            + ")"
        )
    try:
        image = _loader()(str(file))
    except Exception as e:
        reason = str(e).strip().splitlines()
        return f"cannot be read: it is truncated or damaged ({type(e).__name__}{': ' + reason[-1] if reason else ''})"
    shape = tuple(image.shape[1:])
    while len(shape) > spatial_dims and shape[-1] == 1:  # a DICOM slice loads one voxel deep (AsSpatialDims)
        shape = shape[:-1]
    if len(shape) != spatial_dims:
        return (
            f"has {len(shape)} spatial dimensions (shape {tuple(image.shape)}); the bundle takes {spatial_dims}D images"
        )
    if channels is not None and image.shape[0] not in channels:
        allowed = " or ".join(map(str, channels))
        return f"has {image.shape[0]} channels (shape {tuple(image.shape)}); the bundle takes {allowed}"
    if check_values:
        values = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)  # plain: no meta cost
        values = values.float()
        if not torch.isfinite(values).all():
            return "holds NaN or Inf values"
        low, high = float(values.min()), float(values.max())
        if low == high:
            return f"is constant (every value is {low:g}): there is nothing to learn or predict from it"
    scale = 1.0 if resize_to is None else resize_to / max(shape)
    smallest = min(shape) * scale
    if smallest < min_size:
        size = "x".join(map(str, shape))
        return f"is {size}: its smallest side becomes {smallest:.0f} px after resizing, below the minimum {min_size}"
    spacing = [float(s) for s in getattr(image, "pixdim", [1.0] * spatial_dims)][:spatial_dims]
    spacing = [s if math.isfinite(s) and s > 0 else 1.0 for s in spacing] + [1.0] * (spatial_dims - len(spacing))
    extent = [n * s for n, s in zip(shape, spacing)]
    ratio = max(extent) / min(extent)
    if ratio > max_aspect_ratio:
        size = "x".join(map(str, shape))
        return f"is {size} (aspect ratio {ratio:.0f}, more than {max_aspect_ratio:g}): it would become a thin strip"
    return None


def _problems(items: Sequence[Mapping], keys: Sequence[str], image_key: str, **kwargs) -> list[tuple[str, str]]:
    found = []
    for item in items:
        for key in keys:
            value = item.get(key)
            if not isinstance(value, str):
                continue  # a label given as a number, a box list, a missing optional key
            check = {} if key == image_key else {"channels": None, "check_values": False}
            problem = check_image(value, **{**kwargs, **check})
            if problem is not None:
                found.append((value, f"{key} {value} {problem}"))
    return found


def check_datalist(
    datalist: Mapping[str, Sequence[Mapping]] | Sequence[Mapping],
    spatial_dims: int,
    keys: Sequence[str] = ("image",),
    image_key: str = "image",
    channels: Sequence[int] | None = (1, 3, 4),
    resize_to: int | None = None,
    min_size: int = 8,
    max_aspect_ratio: float = 10.0,
) -> Mapping[str, Sequence[Mapping]] | Sequence[Mapping]:
    """``datalist`` unchanged when every file of every split passes :func:`check_image`; else a ``ValueError`` that
    names each bad file and what is wrong with it. Only ``image_key`` is checked for channels and values; the other
    ``keys`` (labels) for format, readability and shape. The arguments after ``keys`` are those of
    :func:`check_image`."""
    splits = datalist.items() if isinstance(datalist, Mapping) else [("datalist", datalist)]
    kwargs = dict(spatial_dims=int(spatial_dims), channels=channels, resize_to=resize_to, min_size=min_size)
    problems = []
    for split, items in splits:
        found = _problems(items, keys, image_key, max_aspect_ratio=max_aspect_ratio, **kwargs)
        problems.extend(f"{split}: {reason}" for _, reason in found)
    if problems:
        raise ValueError(f"{len(problems)} file(s) of the datalist cannot be used: " + "; ".join(problems))
    return datalist


@dataclass
class InputCheck:
    """The inputs of an inference run: ``items`` to process, and the ``failures`` left out, ``(file, reason)``."""

    items: list[dict]
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, processed: int | None = None) -> str:
        """``"processed 9 of 10 files; 1 failed: a.png is constant ..."``."""
        total = len(self.items) + len(self.failures)
        done = len(self.items) if processed is None else processed
        text = f"processed {done} of {total} files"
        if self.failures:
            text += f"; {len(self.failures)} failed: " + "; ".join(reason for _, reason in self.failures)
        return text


def check_inputs(
    items: Sequence[Mapping],
    spatial_dims: int,
    keys: Sequence[str] = ("image",),
    channels: Sequence[int] | None = (1, 3, 4),
    resize_to: int | None = None,
    min_size: int = 8,
    max_aspect_ratio: float = 10.0,
) -> InputCheck:
    """The files of an inference run that pass :func:`check_image`, and each that does not with its reason (logged
    as it is found). No file passing raises a ``ValueError`` naming them all."""
    kwargs = dict(spatial_dims=int(spatial_dims), channels=channels, resize_to=resize_to, min_size=min_size)
    good, failures = [], []
    for item in items:
        found = _problems([item], keys, keys[0], max_aspect_ratio=max_aspect_ratio, **kwargs)
        if found:
            failures.extend(found)
            for _, reason in found:
                logger.warning(f"skipping {reason}")
        else:
            good.append(dict(item))
    check = InputCheck(good, failures)
    if not good:
        raise ValueError(f"no input can be processed: {check.summary(0)}")
    return check
