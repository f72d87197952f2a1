"""Plumbing shared by the Frepa transforms: batch handling, error messages naming the file, seeded torch draws.

Every transform takes channel-first images, ``(C, *spatial)``, or batches, ``(B, C, *spatial)`` (pass
``spatial_dims`` for batches, since a 2D batch looks like a 3D volume), as torch tensors on any device or numpy
arrays, and returns the input's type, dtype and device. Random transforms are MONAI ``RandomizableTransform`` s:
``set_random_state(seed)`` makes them reproducible on CPU and CUDA alike, each call drawing one torch seed from
``self.R`` and all random numbers of the call from a torch generator on the image's device.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import RandomizableTransform
from monai.utils import MAX_SEED, convert_to_dst_type, convert_to_tensor

__all__ = ["seeded_generator", "TorchSeeded", "as_batch", "restore", "check_finite", "source_of", "named"]


def as_batch(img: NdarrayOrTensor, spatial_dims: int | None, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``img`` as a float ``(B, C, *spatial)`` tensor and whether the input was batched.

    Raises a ``ValueError`` naming the transform and the image's source file for a wrong number of
    dimensions or for NaN / Inf values.
    """
    x = convert_to_tensor(img, track_meta=False)
    source = source_of(img)
    dims = x.ndim - 1 if spatial_dims is None else spatial_dims
    if dims not in (2, 3) or x.ndim not in (dims + 1, dims + 2):
        raise ValueError(
            f"{name}: {source}has shape {tuple(x.shape)}; expected channel-first (C, *spatial) or "
            f"(B, C, *spatial) with 2 or 3 spatial dims (spatial_dims={spatial_dims})."
        )
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    check_finite(x, name, source)
    batched = x.ndim == dims + 2
    return (x if batched else x[None]), batched


def check_finite(x: torch.Tensor, name: str, source: str) -> None:
    """Raise a ``ValueError`` naming ``name`` and ``source`` if the float tensor ``x`` holds NaN or Inf."""
    # NaN and Inf propagate into the sum, which is far cheaper than isfinite(x); the latter only confirms
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: {source}contains NaN or Inf values; clean or mask the image first.")


def source_of(img: NdarrayOrTensor) -> str:
    """``"file '<path>' "`` for a MetaTensor loaded from a file, else ``""`` (for error messages)."""
    if isinstance(img, MetaTensor):
        filename = img.meta.get("filename_or_obj")
        if filename:
            return f"image '{filename}' "
    return ""


def restore(out: torch.Tensor, batched: bool, like: NdarrayOrTensor) -> NdarrayOrTensor:
    """Undo :func:`as_batch`: drop the batch axis if the input had none, return the input's type and dtype."""
    out = out if batched else out[0]
    return convert_to_dst_type(out, like)[0]


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch random generator on ``device`` seeded with ``seed`` (all draws of a call come from it)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


class TorchSeeded(RandomizableTransform):
    """A ``RandomizableTransform`` whose ``randomize`` draws one torch seed per call from ``self.R``."""

    _seed: int = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(MAX_SEED))


def named(key: Hashable, transform, img, *args, **kwargs):
    """Call ``transform(img)`` and prefix a ``ValueError`` with the dictionary key."""
    try:
        return transform(img, *args, **kwargs)
    except ValueError as e:
        raise ValueError(f"key '{key}': {e}") from e


def standard_normal(
    shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``N(0, 1)`` samples by the Box-Muller transform of ``torch.rand`` draws.

    Exactly Gaussian like ``torch.randn``, and faster on CPU, where ``randn`` runs on one thread while the
    element-wise logarithm, square root, sine and cosine here use all of them.
    """
    n = math.prod(shape)
    uniform = torch.rand((2, (n + 1) // 2), generator=generator, device=device, dtype=dtype)
    radius = uniform[0].neg_().log1p_().mul_(-2.0).sqrt_()  # sqrt(-2 ln(1 - u)), u in [0, 1): finite
    angle = uniform[1].mul_(2.0 * math.pi)
    out = torch.empty((2, (n + 1) // 2), device=device, dtype=dtype)
    torch.cos(angle, out=out[0])
    torch.sin(angle, out=out[1])
    return out.mul_(radius).view(-1)[:n].view(shape)
