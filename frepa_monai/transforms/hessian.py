"""The Hessian ridge channel of the encoder input (paper Eq. 6): a Frangi-style multi-scale filter in the image
domain, and its dictionary twin."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

from frepa_monai.transforms.utils import as_batch, named, restore

__all__ = ["HessianFilter", "HessianFilterd"]


class HessianFilter(Transform):
    """Multi-scale Hessian ridge (vesselness) filter, Frangi-style, in the image domain (paper Eq. 6).

    The channel mean of the image is smoothed with Gaussians of ``sigmas`` (pixels; separable convolution,
    kernels cut at 3 sigma, edges replicated) and its Hessian taken by finite differences. From the
    eigenvalues sorted by magnitude (``|l1| <= |l2| (<= |l3|)``) the Frangi measure is
    ``exp(-Rb^2 / 2 beta^2) (1 - exp(-S^2 / 2 c^2))`` in 2D (``Rb = l1 / l2``) and
    ``(1 - exp(-Ra^2 / 2 alpha^2)) exp(-Rb^2 / 2 beta^2) (1 - exp(-S^2 / 2 c^2))`` in 3D
    (``Ra = l2 / l3``, ``Rb = l1 / sqrt(|l2 l3|)``), with ``S`` the Hessian norm and ``c`` half its maximum
    per image and scale. The maximum over scales is divided by its maximum per image, giving one channel in
    [0, 1] (all zeros for an image without ridges).

    Args:
        sigmas: Gaussian scales in pixels.
        alpha, beta: Frangi's plate / blob sensitivities.
        polarity: ``"both"`` (bright and dark ridges: vessels are dark in fundus photos, bright in CT
            angiography), ``"bright"`` or ``"dark"``.
        spatial_dims: 2 or 3; ``None`` takes ``img.ndim - 1`` (unbatched input).

    Returns ``(1, *spatial)`` for ``(C, *spatial)`` input, ``(B, 1, *spatial)`` for batches.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        sigmas: Sequence[float] = (1.0, 2.0, 3.0),
        alpha: float = 0.5,
        beta: float = 0.5,
        polarity: str = "both",
        spatial_dims: int | None = None,
    ) -> None:
        if polarity not in ("both", "bright", "dark"):
            raise ValueError(f"polarity must be 'both', 'bright' or 'dark', got {polarity!r}.")
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"sigmas must be positive, got {sigmas}.")
        self.sigmas = tuple(float(s) for s in sigmas)
        self.alpha = alpha
        self.beta = beta
        self.polarity = polarity
        self.spatial_dims = spatial_dims

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x, batched = as_batch(img, self.spatial_dims, type(self).__name__)
        # float32 even under autocast (the strategy computes the channel inside the AMP step): the second
        # differences of a half-precision smoothing would lose most of their digits
        x = x if x.dtype == torch.float64 else x.float()
        with torch.autocast(x.device.type, enabled=False):
            ridges = self.ridges(x.mean(dim=1, keepdim=True))
        return restore(ridges, batched, img)

    def ridges(self, x: torch.Tensor) -> torch.Tensor:
        """Ridge measure of a single-channel float batch ``(B, 1, *spatial)``, scaled to [0, 1] per image.

        ``c`` is taken per scale, so the measure of each scale does not depend on the ``sigma^2`` normalisation of
        the Hessian (``Ra``, ``Rb`` and ``S / c`` are all scale-free): it is left out.
        """
        nd = x.ndim - 2
        smoothed = _gaussian_smooth(x, self.sigmas)  # (B, S, *spatial), one channel per sigma
        axes = tuple(range(2, 2 + nd))
        first = [_central_difference(smoothed, axis) for axis in axes[:-1]]
        hessian = {(a, a): _second_difference(smoothed, axes[a]) for a in range(nd)}
        hessian.update({(a, b): _central_difference(first[a], axes[b]) for a in range(nd) for b in range(a + 1, nd)})
        eig = _sorted_eigenvalues(hessian, nd)  # |l1| <= |l2| (<= |l3|)
        norm2 = eig[0].square()
        for value in eig[1:]:
            norm2.addcmul_(value, value)
        c2 = (0.25 * norm2.amax(dim=axes, keepdim=True)).clamp_min(1e-20)  # c = half the largest Hessian norm
        # in-place chains below: one pass per operation over the (B, S, *spatial) field, no temporaries kept
        vesselness = norm2.div_(c2.mul_(-2)).exp_().neg_().add_(1.0)  # 1 - exp(-S^2 / 2 c^2)
        tiny = 1e-20
        if nd == 2:
            l1, l2 = eig
            vesselness.mul_(l1.square().div_(l2.square().clamp_min_(tiny)).div_(-2 * self.beta**2).exp_())
            signs = [l2]
        else:  # an eigenvalue of 0 in l2 or l3 makes l1 = 0 and Ra = 0, so the measure 0: no division issue
            l1, l2, l3 = eig
            ra = l2.square().div_(l3.square().clamp_min_(tiny)).div_(-2 * self.alpha**2).exp_().neg_().add_(1.0)
            vesselness.mul_(ra)
            vesselness.mul_(l1.square().div_((l2 * l3).abs_().clamp_min_(tiny)).div_(-2 * self.beta**2).exp_())
            signs = [l2, l3]
        for s in signs:  # bright ridges curve down (negative eigenvalues across the ridge), dark ones up
            if self.polarity == "bright":
                vesselness *= s < 0
            elif self.polarity == "dark":
                vesselness *= s > 0
        best = vesselness.amax(dim=1, keepdim=True)
        peak = best.amax(dim=axes, keepdim=True)
        return torch.where(peak > 0, best / peak.clamp_min(tiny), torch.zeros_like(best))


def _central_difference(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``(t[i + 1] - t[i - 1]) / 2`` along ``dim``, one-sided at the ends (as ``torch.gradient``, fewer passes)."""
    n = t.shape[dim]
    out = torch.zeros_like(t)
    if n > 1:
        torch.sub(t.narrow(dim, 2, n - 2), t.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2)).mul_(0.5)
        torch.sub(t.narrow(dim, 1, 1), t.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
        torch.sub(t.narrow(dim, n - 1, 1), t.narrow(dim, n - 2, 1), out=out.narrow(dim, n - 1, 1))
    return out


def _second_difference(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t[i + 1] - 2 t[i] + t[i - 1]`` along ``dim``, with the ends replicated."""
    n = t.shape[dim]
    padded = torch.cat([t.narrow(dim, 0, 1), t, t.narrow(dim, n - 1, 1)], dim=dim)
    return padded.narrow(dim, 2, n) + padded.narrow(dim, 0, n) - 2 * t


def _gaussian_kernels(sigmas: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1D Gaussians of every sigma, zero-padded to one length, shape ``(S, 2r + 1)``."""
    radius = max(int(math.ceil(3 * s)) for s in sigmas)
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernels = torch.stack([torch.exp(-(t**2) / (2 * s**2)) * (t.abs() <= math.ceil(3 * s)) for s in sigmas])
    return kernels / kernels.sum(dim=1, keepdim=True)


def _gaussian_smooth(x: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B, 1, *spatial)`` at every sigma: ``(B, S, *spatial)``."""
    nd = x.ndim - 2
    conv = (F.conv2d, F.conv3d)[nd - 2]
    kernels = _gaussian_kernels(sigmas, x.device, x.dtype)
    radius = kernels.shape[1] // 2
    out = x.expand(-1, len(sigmas), *x.shape[2:])
    for axis in range(nd):
        shape = [len(sigmas), 1] + [1] * nd
        shape[2 + axis] = kernels.shape[1]
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernels.view(shape), groups=len(sigmas))
    return out


def _sorted_eigenvalues(h: dict[tuple[int, int], torch.Tensor], nd: int) -> tuple[torch.Tensor, ...]:
    """Eigenvalues ``(l1, l2[, l3])`` of the symmetric Hessian field ``h[(a, b)]`` (``a <= b``), in closed form,
    ordered by magnitude: ``|l1| <= |l2| (<= |l3|)``."""
    if nd == 2:
        half_trace = (h[0, 0] + h[1, 1]) / 2
        radius = torch.sqrt(((h[0, 0] - h[1, 1]) / 2).square() + h[0, 1].square())
        low, high = half_trace - radius, half_trace + radius
        small = torch.where(low.abs() <= high.abs(), low, high)
        return small, low + high - small
    # symmetric 3x3 matrices, trigonometric method: e1 >= e2 >= e3. With D = A - q I and p^2 = |D|_F^2 / 6,
    # det(D / p) = det(D) / p^3, so the scaled matrix is never formed (fewer passes over the volume)
    a11, a22, a33, a12, a13, a23 = h[0, 0], h[1, 1], h[2, 2], h[0, 1], h[0, 2], h[1, 2]
    q = (a11 + a22).add_(a33).div_(3)
    d11, d22, d33 = a11 - q, a22 - q, a33 - q
    off = a12.square().addcmul_(a13, a13).addcmul_(a23, a23)
    p = d11.square().addcmul_(d22, d22).addcmul_(d33, d33).add_(off, alpha=2).div_(6).sqrt_()
    det = d11 * (d22 * d33 - a23.square())
    det.sub_(a12 * (a12 * d33 - a23 * a13)).add_(a13 * (a12 * a23 - d22 * a13))
    det.div_(torch.where(p > 1e-12, p, torch.ones_like(p)).pow(3))
    phi = det.div_(2).clamp_(-1.0, 1.0).acos_().div_(3)
    e1 = torch.cos(phi).mul_(2 * p).add_(q)
    e3 = phi.add_(2 * math.pi / 3).cos_().mul_(2 * p).add_(q)
    e2 = (3 * q).sub_(e1).sub_(e3)
    # the largest magnitude is at an end of the value order; then order the other two
    l3 = torch.where(e1.abs() >= e3.abs(), e1, e3)
    other = e1 + e3 - l3
    l1 = torch.where(other.abs() <= e2.abs(), other, e2)
    return l1, other + e2 - l1, l3


class HessianFilterd(MapTransform):
    """Dictionary twin of :class:`HessianFilter`.

    Args:
        keys: images to filter.
        output_keys: where to store each key's ridge channel; default ``"<key>_hessian"``.
        append: instead, concatenate the ridge channel to the image itself (``in_channels + 1`` channels,
            the downstream encoder input ``concat(image, HessianFilter(image))``).
        sigmas, alpha, beta, polarity, spatial_dims: see :class:`HessianFilter`.
        allow_missing_keys: skip keys that are not in the data.
    """

    backend = HessianFilter.backend

    def __init__(
        self,
        keys: KeysCollection,
        output_keys: KeysCollection | None = None,
        append: bool = False,
        sigmas: Sequence[float] = (1.0, 2.0, 3.0),
        alpha: float = 0.5,
        beta: float = 0.5,
        polarity: str = "both",
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = [f"{k}_hessian" for k in self.keys] if output_keys is None else list(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must match keys {self.keys} one to one.")
        self.append = append
        self.filter = HessianFilter(sigmas, alpha, beta, polarity, spatial_dims)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            ridges = named(key, self.filter, d[key])
            if self.append:
                batch_axis = 1 if d[key].ndim == (self.filter.spatial_dims or d[key].ndim - 1) + 2 else 0
                cat = torch.cat if isinstance(d[key], torch.Tensor) else np.concatenate
                d[key] = cat([d[key], ridges], batch_axis)
            else:
                d[out_key] = ridges
        return d
