"""The optimised Frepa step gives the loss and gradients of the step as first written (paper Eq. 7-11).

The reference below is the step before the speed work, term by term: every view reconstructed in one pass,
then per view the masked RMSE (Eq. 7, the mask expanded to every channel), the gradient loss (Eq. 8) and the
HFL (Eq. 9, its filters built at every call), averaged over the views, plus the consistency term (Eq. 10) of
the first two views' embeddings. The optimised step computes the reconstruction terms once on the stacked
views' error. Same seed, same network: the corruption draws are identical, so every term, the total and every
parameter's gradient must agree to float tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch

from frepa_monai.frequency import filter_bank, gaussian_highpass
from frepa_monai.losses import EmbeddingConsistencyLoss
from frepa_monai.networks import build_autoencoder
from frepa_monai.strategies import FrepaStrategy, network_input


def _rmse_before(recon, target, mask):
    sq = (recon - target).square()
    axes = tuple(range(1, recon.ndim))
    if mask is None:
        mse = sq.mean(dim=axes)
    else:
        weight = mask.to(sq.dtype).expand_as(sq)
        mse = (sq * weight).sum(dim=axes) / weight.sum(dim=axes).clamp_min(1.0)
    return torch.where(mse > 0, mse.clamp_min(1e-20).sqrt(), torch.zeros_like(mse)).mean()


def _grad_before(recon, target):
    error = recon - target
    axes = tuple(range(1, recon.ndim))
    return torch.stack([error.diff(dim=a).abs().mean(dim=axes) for a in range(2, recon.ndim)]).mean(0).mean()


def _hfl_before(recon, target, cutoffs=(0.1, 0.2, 0.3, 0.4, 0.5)):
    spatial = tuple(recon.shape[2:])
    highpass = [gaussian_highpass(spatial, c * min(spatial), real=True) for c in cutoffs]
    filtered = filter_bank(recon - target, highpass)
    return filtered.abs().mean(dim=(0, *range(2, filtered.ndim))).mean()


def _step_before(strategy: FrepaStrategy, network, images, epoch):
    hessian = strategy.hessian_of(images, None)
    views = strategy.corrupt(images)
    inputs = torch.cat([network_input(view, hessian) for view in views.views])
    recon, embedding = network(inputs, return_embedding=True)
    recons, embeddings = recon.chunk(strategy.views), embedding.chunk(strategy.views)
    terms = {
        "rmse": torch.stack([_rmse_before(r, images, m) for r, m in zip(recons, views.masks)]).mean(),
        "grad": torch.stack([_grad_before(r, images) for r in recons]).mean(),
        "hfl": torch.stack([_hfl_before(r, images) for r in recons]).mean(),
        "con": EmbeddingConsistencyLoss()(embeddings[0], embeddings[1]),
    }
    terms["loss"] = terms["rmse"] + terms["grad"] + terms["hfl"] + 0.5 * terms["con"]
    return terms


@pytest.mark.parametrize("encoder", ["vit_tiny", "convnext_tiny"])
@pytest.mark.parametrize("dims,size", [(2, 64), (3, 32)])
def test_optimised_step_equals_the_step_as_first_written(encoder, dims, size):
    torch.manual_seed(0)
    channels = 3 if dims == 2 else 1
    images = torch.rand(3, channels, *[size] * dims)
    network = build_autoencoder(encoder, dims, channels + 1, size, out_channels=channels)
    reference_network = copy.deepcopy(network)

    optimised = FrepaStrategy(dims).set_random_state(7)(network, images, epoch=10)
    optimised.loss.backward()
    before = _step_before(FrepaStrategy(dims).set_random_state(7), reference_network, images, epoch=10)
    before["loss"].backward()

    # both corruption kinds were drawn, so both mask paths (image-masked and whole-image views) are compared
    assert optimised.terms["con"] > 0 and before["rmse"] > 0
    for name in ("loss", "rmse", "grad", "hfl", "con"):
        torch.testing.assert_close(optimised.terms[name], before[name].detach(), rtol=1e-5, atol=1e-7)
    grads = dict(reference_network.named_parameters())
    compared = 0
    for name, parameter in network.named_parameters():
        if parameter.grad is None:
            assert grads[name].grad is None, name
            continue
        torch.testing.assert_close(parameter.grad, grads[name].grad, rtol=1e-4, atol=1e-7, msg=name)
        compared += 1
    assert compared == sum(1 for p in network.parameters() if p.requires_grad)
