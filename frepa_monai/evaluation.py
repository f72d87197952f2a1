"""Closed-form probes of frozen encoders: what their features hold of each frequency band (paper Fig. 7) and of
fine vessels, also on high-pass filtered images (paper Fig. 1a).

Every probe is a ridge readout of a frozen encoder's tokens, deterministic and solved in closed form, so that it
measures the features rather than how well a head happened to train:

- :func:`band_probe`: each token's neighbourhood of features (``neighbourhood`` x ``neighbourhood`` tokens) is
  read out linearly into the token's pixel patch; the patches of held-out images are put together and scored
  per band with :func:`~frepa_monai.metrics.band_r2`. ``encoder=None`` reads the raw pixels instead (the
  reference a useful encoder is measured against: it must reach R^2 >= 0.85 in every band, or the probe itself
  could not see the band).
- :func:`vessel_probe`: the same readout onto a vessel mask (a linear probability model per pixel), cross-
  validated by subject (both eyes of a CHASE_DB1 child stay together), the threshold chosen on the training
  folds; the fitted readout is also scored on Gaussian high-pass filtered test images (the Fig. 1a corruption
  on a task that has signal), and the Hessian ridge filter with a threshold gives the classical reference.

The probes compute the encoder input themselves: ``concat(image, HessianFilter(image))`` for encoders with one
input channel more than the images (the Frepa convention), the image alone otherwise. The ridge penalty is
chosen per probe by cross-validation over images (band probe) or subjects (vessel probe) on the training data
only. Shapes are channel-first, ``(N, C, *spatial)`` with 2 or 3 spatial dims.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from frepa_monai.metrics import FREQUENCY_BANDS, band_r2
from frepa_monai.networks.encoders import PatchifyEncoder
from frepa_monai.transforms import GaussianHighPass, HessianFilter

__all__ = [
    "RIDGE_ALPHAS",
    "encoder_input",
    "token_features",
    "unpatchify",
    "RidgeStatistics",
    "band_probe",
    "tile",
    "untile",
    "dice",
    "best_threshold",
    "vessel_probe",
    "frangi_reference",
]

RIDGE_ALPHAS = tuple(10.0**k for k in range(-5, 3))
"""Ridge penalties tried, relative to the number of training tokens (features are standardised)."""


def _input_channels(encoder: nn.Module) -> int:
    config = getattr(encoder, "network_config", None)
    return int(config["in_channels"]) if config else int(encoder.in_channels)


def encoder_input(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, C, *spatial)``, with the Hessian ridge channel appended when ``encoder`` takes ``C + 1``."""
    wanted = _input_channels(encoder)
    if wanted == images.shape[1]:
        return images
    if wanted == images.shape[1] + 1:
        hessian = HessianFilter(spatial_dims=images.ndim - 2)(images)
        return torch.cat([images, hessian], dim=1)
    raise ValueError(f"the encoder takes {wanted} input channels; images with {images.shape[1]} do not fit.")


@torch.no_grad()
def token_features(
    encoder: nn.Module, images: torch.Tensor, neighbourhood: int = 3, batch_size: int = 16
) -> torch.Tensor:
    """Frozen features of every token with its neighbours: ``(N, F * neighbourhood^nd, *grid)``.

    The encoder runs in eval mode on :func:`encoder_input` of ``images`` in batches; the feature map ``(N, F,
    *grid)`` is then unfolded so that each token carries the features of the ``neighbourhood`` tokens around it
    along every axis (zero beyond the border), in float64.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(iter(encoder.parameters()), images).device
        maps = torch.cat(
            [encoder(encoder_input(encoder, chunk.to(device))).double().cpu() for chunk in images.split(batch_size)]
        )
    finally:
        encoder.train(was_training)
    if neighbourhood == 1:
        return maps
    r = neighbourhood // 2
    nd = maps.ndim - 2
    padded = F.pad(maps, [r] * (2 * nd))
    grid = maps.shape[2:]
    shifted = []
    for offset in torch.cartesian_prod(*[torch.arange(neighbourhood)] * nd).view(-1, nd).tolist():
        index = (slice(None), slice(None)) + tuple(slice(o, o + g) for o, g in zip(offset, grid))
        shifted.append(padded[index])
    return torch.cat(shifted, dim=1)


def unpatchify(patches: torch.Tensor, stride: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :class:`~frepa_monai.networks.encoders.PatchifyEncoder`: ``(N, C * prod(stride), *grid)`` ->
    ``(N, C, *grid * stride)``."""
    n, _, *grid = patches.shape
    nd = len(grid)
    x = patches.reshape(n, channels, *stride, *grid)
    # (N, C, p1, .., pn, g1, .., gn) -> (N, C, g1, p1, .., gn, pn)
    order = [0, 1] + [i for a in range(nd) for i in (2 + nd + a, 2 + a)]
    return x.permute(order).reshape(n, channels, *[g * p for g, p in zip(grid, stride)])


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(N, D, *grid)`` -> ``(N * prod(grid), D)``: one row per token."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class RidgeStatistics:
    """Sufficient statistics of a multi-output ridge regression, summed per group of samples.

    ``add(group, x, y)`` accumulates ``n``, ``sum x``, ``x^T x``, ``sum y``, ``x^T y`` and ``sum |y|^2`` (float64)
    per group. Any union of groups is then solved in closed form, with standardised features and an intercept,
    for a list of penalties at the cost of one eigendecomposition; the squared error of a fit on a group follows
    from that group's statistics alone, so cross-validation never revisits the data.
    """

    def __init__(self) -> None:
        self.groups: dict = {}

    def add(self, group, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` ``(n, D)`` with targets ``y`` ``(n, K)`` to ``group``."""
        x, y = x.double(), y.double()
        stats = (len(x), x.sum(0), x.T @ x, y.sum(0), x.T @ y, y.square().sum())
        old = self.groups.get(group)
        self.groups[group] = stats if old is None else tuple(a + b for a, b in zip(old, stats))

    def solve(self, groups: Sequence, alphas: Sequence[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Ridge fits on the union of ``groups``, one ``(weight (D, K), bias (K,))`` per penalty ``alpha * n``.

        Features are standardised by the union's mean and standard deviation (a constant feature gets weight 0);
        the prediction is ``x @ weight + bias``.
        """
        n, sx, sxx, sy, sxy, _ = (sum(parts) for parts in zip(*(self.groups[g] for g in groups)))
        mean_x, mean_y = sx / n, sy / n
        cov = sxx - n * torch.outer(mean_x, mean_x)
        cross = sxy - n * torch.outer(mean_x, mean_y)
        scale = (cov.diagonal().clamp_min(0) / n).sqrt()
        inv = torch.where(scale > 1e-12 * scale.max().clamp_min(1e-300), 1.0 / scale, torch.zeros_like(scale))
        values, vectors = torch.linalg.eigh(cov * inv[:, None] * inv[None, :])
        projected = vectors.T @ (cross * inv[:, None])
        fits = []
        for alpha in alphas:
            weight = inv[:, None] * (vectors @ (projected / (values.clamp_min(0) + alpha * n)[:, None]))
            fits.append((weight, mean_y - mean_x @ weight))
        return fits

    def squared_error(self, group, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """``sum |y - x weight - bias|^2`` over the samples of ``group``."""
        n, sx, sxx, sy, sxy, syy = self.groups[group]
        fitted = (weight * (sxx @ weight)).sum() + 2 * (sx @ weight) @ bias + n * bias @ bias
        return float(syy - 2 * ((weight * sxy).sum() + sy @ bias) + fitted)

    def choose_alpha(self, groups: Sequence, folds: int, alphas: Sequence[float]) -> float:
        """The penalty with the lowest held-out squared error over ``folds`` folds of ``groups`` (dealt round
        robin; ties go to the larger penalty)."""
        groups = list(groups)
        folds = max(2, min(folds, len(groups)))
        error = torch.zeros(len(alphas), dtype=torch.float64)
        for k in range(folds):
            held = groups[k::folds]
            fits = self.solve([g for g in groups if g not in held], alphas)
            for i, (weight, bias) in enumerate(fits):
                error[i] += sum(self.squared_error(g, weight, bias) for g in held)
        best = float(error.min())
        return max(a for a, e in zip(alphas, error.tolist()) if e <= best + 1e-9 * abs(best))


def _readout(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, patch: Sequence[int], shape: Sequence[int]
) -> torch.Tensor:
    """Token features ``(N, D, *grid)`` read out into images of ``shape`` ``(N, C, *spatial)``."""
    n, _, *grid = features.shape
    patches = (_rows(features) @ weight + bias).reshape(n, *grid, -1).movedim(-1, 1)
    images = unpatchify(patches, patch, shape[1])
    return images[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape[2:])]


def _patch_targets(images: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    return PatchifyEncoder(images.shape[1], stride, images.ndim - 2)(images.double())


def _source(encoder: nn.Module | None, channels: int, spatial_dims: int, stride: int, hessian: bool) -> nn.Module:
    """The encoder, or for ``None`` the raw-pixel reference: the pixels of each ``stride`` patch of the encoder
    input (image, plus the Hessian channel with ``hessian``)."""
    if encoder is not None:
        return encoder
    source = PatchifyEncoder(channels + int(hessian), stride, spatial_dims)
    source.network_config = {"in_channels": channels + int(hessian)}
    return source


def band_probe(
    encoder: nn.Module | None,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    neighbourhood: int | None = None,
    stride: int = 8,
    hessian: bool = True,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    folds: int = 5,
    per_image: bool = False,
    examples: Sequence[int] = (),
) -> dict:
    """Band R^2 of a ridge readout from frozen token features to each token's pixel patch (paper Fig. 7, closed form).

    Args:
        encoder: a frozen encoder (``(N, C_in, *spatial)`` -> ``(N, F, *grid)`` with a ``stride``), or ``None`` for
            the raw-pixel reference.
        train_images: ``(N, C, *spatial)`` images in [0, 1] the readout is fitted on, at the encoder's input size.
        test_images: ``(M, C, *spatial)`` held-out images it is scored on.
        neighbourhood: tokens per axis around each token whose features are read (odd); default 3, and 1 for the
            raw-pixel reference, whose own patch already holds every pixel it is read out into.
        stride, hessian: patch size and Hessian channel of the raw-pixel reference (``encoder=None`` only).
        alphas: ridge penalties tried (relative to the number of training tokens), chosen by ``folds``-fold
            cross-validation over the training images.
        per_image: also return each test image's R^2 per band.
        examples: indices of test images whose readout is returned too.

    Returns:
        ``{"low": r2, "mid": r2, "high": r2, "alpha": chosen penalty}``, means over the test images; with
        ``per_image`` ``"per_image": {"low": [...], "mid": [...], "high": [...]}``; with ``examples``
        ``"examples"``, their readouts ``(len(examples), C, *spatial)``.
    """
    channels, nd = train_images.shape[1], train_images.ndim - 2
    source = _source(encoder, channels, nd, stride, hessian)
    neighbourhood = neighbourhood or (1 if encoder is None else 3)
    patch = tuple(int(s) for s in source.stride)
    stats = RidgeStatistics()
    for i, chunk in enumerate(train_images.split(8)):
        x = _rows(token_features(source, chunk, neighbourhood))
        stats.add(i % folds, x, _rows(_patch_targets(chunk, patch)))
    alpha = stats.choose_alpha(list(stats.groups), folds, alphas)
    weight, bias = stats.solve(list(stats.groups), [alpha])[0]
    scores, readouts = {band: [] for band in FREQUENCY_BANDS}, {}
    for start in range(0, len(test_images), 8):
        chunk = test_images[start : start + 8]
        pred = _readout(token_features(source, chunk, neighbourhood), weight, bias, patch, chunk.shape)
        readouts.update({i: pred[i - start].float() for i in examples if start <= i < start + len(chunk)})
        for band in FREQUENCY_BANDS:
            scores[band] += band_r2(pred, chunk.double(), band).tolist()
    out = {band: float(torch.tensor(v).nanmean()) for band, v in scores.items()}
    out["alpha"] = alpha
    if per_image:
        out["per_image"] = scores
    if examples:
        out["examples"] = torch.stack([readouts[i] for i in examples])
    return out


def tile(images: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut ``(N, C, H, W)`` images, zero-padded at the end to multiples of ``size``, into ``(N * a * b, C, size,
    size)`` tiles (row by row); returns the tiles and the tile grid ``(a, b)``."""
    n, c, h, w = images.shape
    grid = (math.ceil(h / size), math.ceil(w / size))
    padded = F.pad(images, (0, grid[1] * size - w, 0, grid[0] * size - h))
    tiles = padded.view(n, c, grid[0], size, grid[1], size).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(-1, c, size, size), grid


def untile(tiles: torch.Tensor, grid: tuple[int, int], shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`tile`: ``(N * a * b, C, size, size)`` -> ``(N, C, H, W)`` of ``shape``."""
    a, b = grid
    _, c, size, _ = tiles.shape
    images = tiles.reshape(-1, a, b, c, size, size).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, a * size, b * size)
    return images[..., : shape[-2], : shape[-1]]


def dice(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Dice similarity per image of boolean masks ``(N, *spatial)`` inside ``region`` (1.0 when both are empty)."""
    if region is not None:
        pred, target = pred & region, target & region
    overlap = (pred & target).flatten(1).sum(1).double()
    total = (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).double()
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))


def best_threshold(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """The threshold on ``scores`` (1D) whose mask ``scores >= threshold`` has the highest pooled Dice with the
    boolean ``truth``: every cut between two consecutive sorted scores is tried (the midpoint is returned)."""
    ranked, order = torch.sort(scores.double())
    hits = truth[order].double()
    n, positives = len(ranked), hits.sum()
    above = hits.flip(0).cumsum(0).flip(0)  # true pixels among ranked[i:], the ones predicted by cut i
    dsc = 2 * above / ((n - torch.arange(n, dtype=torch.float64)) + positives).clamp_min(1)
    cut = int(torch.argmax(dsc))
    return float(ranked[cut] if cut == 0 else (ranked[cut - 1] + ranked[cut]) / 2)


def vessel_probe(
    encoder: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    fov: torch.Tensor,
    groups: Sequence[str],
    cutoffs: Sequence[float] = (),
    tile_size: int | None = None,
    neighbourhood: int = 3,
    stride: int = 8,
    hessian: bool = True,
    alphas: Sequence[float] = RIDGE_ALPHAS,
) -> dict:
    """Vessel Dice of a linear per-pixel readout of frozen features, cross-validated by subject (paper Fig. 1b;
    with ``cutoffs`` the Fig. 1a high-pass robustness on a task that has signal).

    The images are cut into tiles of the encoder's input size; each token's neighbourhood of features is read out
    by ridge regression into the vessel mask of its pixel patch (a linear probability model, one weight vector per
    pixel position). Leave-one-subject-out: for each subject of ``groups`` the readout is fitted on the others
    (penalty chosen by leave-one-subject-out among them), the threshold with the best pooled Dice on them is
    taken, and the subject's images are scored, raw and through :class:`~frepa_monai.transforms.GaussianHighPass`
    at each cut-off ratio of ``cutoffs`` (readout and threshold unchanged; the encoder input, Hessian channel
    included, is computed from the filtered image). Dice counts the pixels inside the field of view.

    Args:
        encoder: a frozen encoder, or ``None`` for the raw-pixel reference (the pixels of each ``stride`` patch of
            the image plus, with ``hessian``, its Hessian channel).
        images: ``(N, C, H, W)`` fundus images in [0, 1].
        labels, fov: ``(N, H, W)`` boolean vessel masks and fields of view.
        groups: the subject of each image; at least 2 subjects.
        cutoffs: Gaussian high-pass cut-offs (fractions of the image size) to test on as well.
        tile_size: tile side; default the encoder's ``img_size`` (128 for the reference).
        neighbourhood: tokens per axis around each token whose features are read.
        alphas: ridge penalties tried (relative to the number of training tokens).

    Returns:
        ``{"dice": mean raw Dice, "highpass": {cutoff: mean Dice}, "per_image": {"raw": [...], cutoff: [...]},
        "groups": [...], "thresholds": {subject: threshold}}``, per-image lists in the order of ``images``.
    """
    _subjects_of(groups)  # fail before computing any feature
    source = _source(encoder, images.shape[1], 2, stride, hessian)
    size = tile_size or int(getattr(source, "network_config", {}).get("img_size", [128])[0])
    patch = tuple(int(s) for s in source.stride)
    shape = tuple(labels.shape[1:])
    grid = tile(torch.zeros(1, 1, *shape), size)[1]

    def features(batch: torch.Tensor) -> torch.Tensor:  # (N * tiles, D, *tokens), float32 to halve the cache
        return token_features(source, tile(batch, size)[0], neighbourhood).float()

    def scores(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # (N, H, W)
        return untile(_readout(feats.double(), weight, bias, patch, (len(feats), 1, size, size)), grid, shape)[:, 0]

    stats, cache = RidgeStatistics(), []
    for i, image in enumerate(images):
        cache.append(features(image[None]))
        targets = _patch_targets(tile(labels[i][None, None].double(), size)[0], patch)
        stats.add(groups[i], _rows(cache[-1]), _rows(targets))

    def fit(train_subjects: list[str]):
        alpha = stats.choose_alpha(train_subjects, len(train_subjects), alphas)
        weight, bias = stats.solve(train_subjects, [alpha])[0]

        def score(index: list[int], cutoff: float | None = None) -> torch.Tensor:
            if cutoff is None:  # the cached features of the raw images
                return torch.cat([scores(cache[i], weight, bias) for i in index])
            return scores(features(GaussianHighPass(cutoff, spatial_dims=2)(images[index])), weight, bias)

        return score

    return _leave_one_subject_out(fit, labels, fov, groups, cutoffs)


def frangi_reference(
    images: torch.Tensor,
    labels: torch.Tensor,
    fov: torch.Tensor,
    groups: Sequence[str],
    cutoffs: Sequence[float] = (),
    sigmas: Sequence[float] = (1.0, 2.0, 3.0),
) -> dict:
    """The classical reference of :func:`vessel_probe`: the Hessian ridge filter of each image (the encoders'
    extra input channel, :class:`~frepa_monai.transforms.HessianFilter`) thresholded, with the threshold chosen
    leave-one-subject-out exactly as there. Same arguments and result."""
    ridges = HessianFilter(sigmas, spatial_dims=2)

    def fit(train_subjects: list[str]):  # nothing to fit but the threshold
        def score(index: list[int], cutoff: float | None = None) -> torch.Tensor:
            batch = images[index] if cutoff is None else GaussianHighPass(cutoff, spatial_dims=2)(images[index])
            return ridges(batch)[:, 0].double()

        return score

    return _leave_one_subject_out(fit, labels, fov, groups, cutoffs)


def _subjects_of(groups: Sequence[str]) -> list[str]:
    subjects = sorted(set(groups))
    if len(subjects) < 2:
        raise ValueError(f"vessel probes need images of at least 2 subjects, got {subjects}.")
    return subjects


def _leave_one_subject_out(fit, labels: torch.Tensor, fov: torch.Tensor, groups: Sequence[str], cutoffs) -> dict:
    """Leave-one-subject-out Dice of a vessel scorer.

    ``fit(train_subjects)`` returns ``score(index, cutoff=None)``: per-pixel vessel scores ``(len(index), H, W)``
    of those images, raw or high-pass filtered at ``cutoff``. For each subject, the threshold with the best pooled
    Dice (inside the field of view) on the other subjects' raw images is applied to the subject's images.
    """
    subjects = _subjects_of(groups)
    per_image = {key: [math.nan] * len(groups) for key in ("raw", *cutoffs)}
    thresholds = {}
    for subject in subjects:
        train = [i for i, g in enumerate(groups) if g != subject]
        test = [i for i, g in enumerate(groups) if g == subject]
        score = fit([s for s in subjects if s != subject])
        fitted = score(train)
        threshold = thresholds[subject] = best_threshold(fitted[fov[train]], labels[train][fov[train]])
        for key in per_image:
            tested = score(test, None if key == "raw" else key)
            for i, value in zip(test, dice(tested >= threshold, labels[test], fov[test]).tolist()):
                per_image[key][i] = value
    return {
        "dice": float(torch.tensor(per_image["raw"]).mean()),
        "highpass": {c: float(torch.tensor(per_image[c]).mean()) for c in cutoffs},
        "per_image": per_image,
        "groups": list(groups),
        "thresholds": thresholds,
    }
