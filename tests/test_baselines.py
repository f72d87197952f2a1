"""Tests of the MAE and MFM baselines (frepa_monai.strategies, frepa_monai.losses) and the ViT visible-token path."""

from __future__ import annotations

import math

import pytest
import torch

from frepa_monai.losses import MaskedFrequencyL1Loss, MaskedPatchMSELoss, patch_to_pixel_mask
from frepa_monai.networks import MaskTokens, build_autoencoder, build_encoder
from frepa_monai.strategies import MAEStrategy, MFMStrategy, circular_frequency_mask, random_patch_mask, unwrap


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int, channels: int, *spatial: int) -> torch.Tensor:
    """Random images in [0.1, 1]: no pixel is zero before masking."""
    return 0.1 + 0.9 * torch.rand(batch, channels, *spatial)


def _tiny(name: str, spatial_dims: int, channels: int, size: int = 32, hessian: bool = False, mae: bool = True):
    """A tiny autoencoder, with MAE's mask token (on a ViT) unless ``mae=False``, as the bundles build it."""
    return build_autoencoder(name, spatial_dims, channels + hessian, size, out_channels=channels, mask_token=mae)


def _reference_removed(spatial, radius: float, low_pass: bool) -> torch.Tensor:
    """The removed frequencies from distances measured in the fftshift-ed spectrum, ifftshift-ed back."""
    axes = torch.meshgrid(*[torch.arange(s) - s // 2 for s in spatial], indexing="ij")
    d2 = sum(a.double() ** 2 for a in axes)
    inside = torch.fft.ifftshift(d2 <= radius**2)
    return ~inside if low_pass else inside


# ------------------------------------------------------------------------------------------------ MAE


@pytest.mark.parametrize("spatial, patch", [((32, 32), 8), ((45, 70), 16), ((16, 24, 20), 8)])
def test_mae_masks_round_ratio_of_patches_per_image(spatial, patch):
    strategy = MAEStrategy(len(spatial), patch_size=patch)
    images = _images(4, 1, *spatial)
    masked, visible = strategy.draw_mask(images, (patch,) * len(spatial), _gen())
    grid = tuple(math.ceil(s / patch) for s in spatial)
    n = math.prod(grid)
    assert masked.shape == (4, *grid)
    assert (masked.flatten(1).sum(1) == round(0.75 * n)).all()
    assert visible.shape == (4, n - round(0.75 * n))
    # visible = exactly the unmasked patches, sorted; images get different masks
    assert (visible.diff(dim=1) > 0).all()
    assert not masked.flatten(1).gather(1, visible).any()
    assert not all(torch.equal(masked[0], m) for m in masked[1:])


def test_random_patch_mask_is_uniform():
    masked, _ = random_patch_mask(4000, 8, 6, _gen(), "cpu")
    assert torch.allclose(masked.float().mean(0), torch.full((8,), 0.75), atol=0.03)


def test_patch_to_pixel_mask_cuts_border_patches():
    grid = torch.tensor([[[True, False], [False, True]]])
    pixels = patch_to_pixel_mask(grid, (4, 4), (6, 7))
    assert pixels.shape == (1, 1, 6, 7)
    assert pixels[0, 0, :4, :4].all() and not pixels[0, 0, :4, 4:].any()
    assert not pixels[0, 0, 4:, :4].any() and pixels[0, 0, 4:, 4:].all()


def test_masked_patch_mse_counts_only_masked_patches():
    loss = MaskedPatchMSELoss(patch_size=8)
    target = torch.rand(2, 3, 16, 16)
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [True, True]]])
    assert loss(target.clone(), target, mask) == 0
    pixel = patch_to_pixel_mask(mask, (8, 8), (16, 16))
    off_mask = target + 5.0 * (~pixel)  # an error confined to the visible patches
    assert loss(off_mask, target, mask) == 0
    on_mask = target + 0.5 * pixel  # error 0.5 on every masked pixel
    assert torch.isclose(loss(on_mask, target, mask), torch.tensor(0.25))


def test_norm_pix_loss_normalises_each_patch_like_mae():
    loss = MaskedPatchMSELoss(patch_size=(8, 4), norm_pix_loss=True)
    target = torch.rand(2, 3, 16, 12)
    tokens = target.view(2, 3, 2, 8, 3, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 3 * 32)
    expected = (tokens - tokens.mean(-1, keepdim=True)) / (tokens.var(-1, keepdim=True) + 1e-6).sqrt()
    got = loss.normalize_patches(target).view(2, 3, 2, 8, 3, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 96)
    assert torch.allclose(got, expected, atol=1e-5)
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    assert loss(loss.normalize_patches(target), target, mask) < 1e-10


def test_vit_encode_visible_with_all_tokens_is_the_forward():
    encoder = build_encoder("vit_tiny", 2, 3, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    n = encoder.num_tokens
    everything = torch.arange(n).expand(2, n)
    grid = encoder(x)  # (B, hidden, 4, 4)
    assert torch.equal(encoder.encode_visible(x, everything).transpose(1, 2).reshape(grid.shape), grid)
    tokens, _ = encoder.vit(x)  # MONAI's ViT forward
    assert torch.equal(grid, tokens.transpose(1, 2).reshape(2, 96, 4, 4))
    shuffled = torch.stack([torch.randperm(n), torch.randperm(n)])  # attention is permutation-equivariant
    out = encoder.encode_visible(x, shuffled)  # (B, N, hidden) in the order of `shuffled`
    in_order = grid.flatten(2).transpose(1, 2).gather(1, shuffled[..., None].expand(-1, -1, 96))
    assert torch.allclose(out, in_order, atol=1e-5)


def test_mae_encoder_sees_only_visible_tokens_and_the_mask_token_fills_the_rest():
    encoder = build_encoder("vit_tiny", 2, 3, 32).eval()
    tokens = MaskTokens(encoder.out_channels)
    with torch.no_grad():
        tokens.token.normal_()
    x = torch.rand(2, 3, 32, 32)
    masked, visible = random_patch_mask(2, encoder.num_tokens, 12, _gen(), "cpu")  # 4 of 16 tokens visible
    out = tokens(encoder.encode_visible(x, visible), visible, encoder.grid_size).flatten(2).transpose(1, 2)
    assert torch.equal(out[masked], tokens.token[0].expand(int(masked.sum()), -1))
    # new content in the masked patches changes nothing
    pixel = patch_to_pixel_mask(masked.view(2, 4, 4), encoder.stride, (32, 32))
    y = torch.where(pixel, torch.rand_like(x), x)
    again = tokens(encoder.encode_visible(y, visible), visible, encoder.grid_size).flatten(2).transpose(1, 2)
    assert torch.equal(again, out)


def test_mask_token_lives_in_the_mae_autoencoder_only_and_only_mae_trains_it():
    assert not any("mask" in k for k in build_encoder("vit_tiny", 2, 3, 32).state_dict())
    assert build_autoencoder("vit_tiny", 2, 3, 32, out_channels=3).mask_tokens is None
    assert build_autoencoder("convnext_tiny", 2, 3, 32, out_channels=3, mask_token=True).mask_tokens is None
    net = _tiny("vit_tiny", 2, 3)
    assert net.mask_tokens.token.shape == (1, 1, 96) and not net.mask_tokens.token.any()
    MFMStrategy(2)(net, _images(2, 3, 32, 32), epoch=1).loss.backward()
    assert net.mask_tokens.token.grad is None
    net.zero_grad()
    MAEStrategy(2)(net, _images(2, 3, 32, 32), epoch=1).loss.backward()
    assert net.mask_tokens.token.grad.abs().sum() > 0
    plain = build_autoencoder("vit_tiny", 2, 3, 32, out_channels=3)
    with pytest.raises(ValueError, match="mask_token=True"):
        MAEStrategy(2)(plain, _images(1, 3, 32, 32), epoch=1)


def test_mae_vit_runs_through_wrappers():
    """MAE calls the autoencoder once, through the wrapper's forward (what DistributedDataParallel needs)."""
    net = _tiny("vit_tiny", 2, 3)
    images = _images(2, 3, 32, 32)
    strategy = MAEStrategy(2)
    direct = strategy.set_random_state(3)(net, images, epoch=1)
    wrapper = torch.nn.DataParallel(net)
    assert unwrap(wrapper) is net
    calls = []
    wrapper.register_forward_pre_hook(lambda module, args: calls.append(1))
    wrapped = strategy.set_random_state(3)(wrapper, images, epoch=1)
    assert calls == [1]
    assert torch.equal(direct.recon, wrapped.recon) and torch.equal(direct.loss, wrapped.loss)


def test_mae_vit_patch_size_must_be_the_vit_patch_size():
    net = _tiny("vit_tiny", 2, 3)
    with pytest.raises(ValueError, match="patch size"):
        MAEStrategy(2, patch_size=16)(net, _images(1, 3, 32, 32), epoch=1)


@pytest.mark.parametrize("spatial", [(32, 32), (45, 70)])
def test_simmim_zeroes_masked_patches_and_keeps_visible_ones(spatial):
    net = _tiny("convnext_tiny", 2, 3)
    seen = []
    net.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    strategy = MAEStrategy(2, patch_size=8).set_random_state(1)
    images = _images(2, 3, *spatial)
    out = strategy(net, images, epoch=1)
    assert torch.equal(seen[0], out.corrupted) and out.recon.shape == images.shape
    zero = (out.corrupted == 0).all(1, keepdim=True)  # (B, 1, *spatial)
    assert torch.equal(out.corrupted[~zero.expand_as(images)], images[~zero.expand_as(images)])
    grid = tuple(math.ceil(s / 8) for s in spatial)
    masked = zero[:, 0, ::8, ::8]  # patch corners
    assert masked.shape == (2, *grid)
    assert torch.equal(patch_to_pixel_mask(masked, (8, 8), spatial), zero)
    assert (masked.flatten(1).sum(1) == round(0.75 * math.prod(grid))).all()


def test_mae_with_hessian_feeds_the_hessian_channel():
    net = _tiny("vit_tiny", 2, 3, hessian=True)
    out = MAEStrategy(2, use_hessian=True)(net, _images(2, 3, 32, 32), epoch=1)
    assert out.corrupted.shape == (2, 3, 32, 32) and out.recon.shape == (2, 3, 32, 32)
    assert torch.isfinite(out.loss)


# ------------------------------------------------------------------------------------------------ MFM


@pytest.mark.parametrize("spatial", [(16, 16), (15, 20), (8, 9, 10)])
@pytest.mark.parametrize("low_pass", [True, False])
def test_circular_mask_removes_exactly_the_band(spatial, low_pass):
    radius = 3.3
    removed = circular_frequency_mask(spatial, torch.tensor([radius]), torch.tensor([low_pass]))
    assert removed.shape == (1, 1, *spatial) and removed.dtype == torch.bool
    assert torch.equal(removed[0, 0], _reference_removed(spatial, radius, low_pass))
    # Hermitian: the mask at k equals the mask at -k, so the filtered image is real
    axes = tuple(range(2, removed.ndim))
    flipped = torch.roll(torch.flip(removed, dims=axes), (1,) * len(spatial), axes)  # index k -> -k (mod size)
    assert torch.equal(removed, flipped)


@pytest.mark.parametrize("spatial", [(32, 32), (12, 12, 12)])
def test_mfm_low_pass_keeps_the_mean_and_removes_the_high_band(spatial):
    dims = tuple(range(2, 2 + len(spatial)))
    strategy = MFMStrategy(len(spatial), radius_ratio=0.2, low_pass_prob=1.0, clip=False)
    images = _images(2, 2, *spatial)
    removed = strategy.draw_mask(images, _gen())
    r2 = (0.2 * min(spatial)) ** 2
    d2 = _reference_distance2(spatial)
    assert torch.equal(removed[0, 0], d2 > r2) and torch.equal(removed[1, 0], d2 > r2)
    corrupted = strategy.corrupt(images, removed)
    assert corrupted.dtype == images.dtype and corrupted.shape == images.shape
    assert torch.allclose(corrupted.mean(dims), images.mean(dims), atol=1e-6)
    spectrum, original = torch.fft.fftn(corrupted, dim=dims), torch.fft.fftn(images, dim=dims)
    energy = spectrum.abs().square()
    assert energy[..., d2 > r2].max() < 1e-8 * energy.sum()  # nothing left above the radius
    assert torch.allclose(spectrum[..., d2 <= r2], original[..., d2 <= r2], atol=1e-3)


def test_mfm_high_pass_removes_the_dc_and_the_disc():
    strategy = MFMStrategy(2, radius_ratio=0.1, low_pass_prob=0.0, clip=False)
    images = _images(3, 1, 40, 40)
    removed = strategy.draw_mask(images, _gen())
    d2 = _reference_distance2((40, 40))
    assert torch.equal(removed[:, 0], (d2 <= 16.0).expand(3, -1, -1))
    corrupted = strategy.corrupt(images, removed)
    assert corrupted.mean((2, 3)).abs().max() < 1e-6  # DC removed
    spectrum = torch.fft.fftn(corrupted, dim=(2, 3))
    assert spectrum[..., d2 <= 16.0].abs().max() < 1e-3
    assert torch.allclose(spectrum[..., d2 > 16.0], torch.fft.fftn(images, dim=(2, 3))[..., d2 > 16.0], atol=1e-3)


def test_mfm_corrupted_is_the_real_filtered_image_and_clipped_by_default():
    images = _images(4, 1, 24, 24)
    removed = MFMStrategy(2).draw_mask(images, _gen(5))
    complex_out = torch.fft.ifftn(torch.fft.fftn(images, dim=(2, 3)).masked_fill(removed, 0), dim=(2, 3))
    assert complex_out.imag.abs().max() < 1e-6  # real, not only its real part taken
    assert torch.allclose(MFMStrategy(2, clip=False).corrupt(images, removed), complex_out.real)
    clipped = MFMStrategy(2).corrupt(images, removed)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert torch.equal(clipped, complex_out.real.clamp(0, 1))


def test_mfm_draws_both_filters_and_radii_in_range():
    strategy = MFMStrategy(2, radius_ratio=(0.1, 0.3))
    removed = strategy.draw_mask(torch.zeros(400, 1, 64, 64), _gen())
    low_pass = ~removed[:, 0, 0, 0]  # DC kept <=> low-pass
    assert 0.4 < low_pass.float().mean() < 0.6
    d2 = _reference_distance2((64, 64))
    inside = torch.where(low_pass[:, None, None], ~removed[:, 0], removed[:, 0])  # d <= r
    largest_inside = torch.where(inside, d2, -1.0).flatten(1).amax(1)
    smallest_outside = torch.where(inside, math.inf, d2).flatten(1).amin(1)
    assert largest_inside.max() <= (0.3 * 64) ** 2 and smallest_outside.min() > (0.1 * 64) ** 2
    assert largest_inside.unique().numel() > 10  # radii drawn per image


def test_masked_frequency_l1_counts_only_masked_frequencies():
    loss = MaskedFrequencyL1Loss()
    target = torch.rand(2, 2, 16, 16)
    removed = circular_frequency_mask((16, 16), torch.tensor([3.0, 5.0]), torch.tensor([True, False]))
    assert loss(target.clone(), target, removed) == 0
    keep = (~removed).to(torch.complex64)
    kept_error = torch.fft.ifftn(torch.fft.fftn(torch.randn(2, 2, 16, 16), dim=(2, 3)) * keep, dim=(2, 3)).real
    assert loss(target + kept_error, target, removed) < 1e-6
    # a constant error c lives in the DC alone: |F|(DC) = c * sqrt(H W) with the orthonormal FFT
    high_pass = circular_frequency_mask((16, 16), torch.tensor([2.0]), torch.tensor([False]))
    c = 0.3
    expected = c * 16 / high_pass.sum()
    assert torch.isclose(loss(target[:1, :1] + c, target[:1, :1], high_pass), expected, rtol=1e-4)
    x = target.clone().requires_grad_(True)
    loss(x, target, removed).backward()
    assert torch.isfinite(x.grad).all()  # finite gradient at zero error


def _reference_distance2(spatial) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(s) - s // 2 for s in spatial], indexing="ij")
    return torch.fft.ifftshift(sum(a.float() ** 2 for a in axes))


# ---------------------------------------------------------------------------------------- both, training


@pytest.mark.parametrize("strategy_class", [MAEStrategy, MFMStrategy])
def test_same_seed_same_step(strategy_class):
    net = _tiny("convnext_tiny", 2, 3)
    images = _images(2, 3, 32, 32)
    strategy = strategy_class(2, **({"patch_size": 8} if strategy_class is MAEStrategy else {}))
    first = strategy.set_random_state(7)(net, images, epoch=1)
    again = strategy.set_random_state(7)(net, images, epoch=1)
    other = strategy(net, images, epoch=1)
    assert torch.equal(first.corrupted, again.corrupted) and torch.equal(first.loss, again.loss)
    assert not torch.equal(first.corrupted, other.corrupted)
    key = "mse" if strategy_class is MAEStrategy else "freq_l1"
    assert set(first.terms) == {key, "loss"} and all(not t.requires_grad for t in first.terms.values())


@pytest.mark.parametrize(
    "name, spatial_dims, channels, strategy_class",
    [
        ("vit_tiny", 2, 3, MAEStrategy),
        ("vit_tiny", 2, 3, MFMStrategy),
        ("convnext_tiny", 2, 3, MAEStrategy),
        ("convnext_tiny", 2, 3, MFMStrategy),
        ("vit_tiny", 3, 1, MAEStrategy),
        ("vit_tiny", 3, 1, MFMStrategy),
    ],
)
def test_adam_steps_lower_the_loss(name, spatial_dims, channels, strategy_class):
    net = _tiny(name, spatial_dims, channels, mae=strategy_class is MAEStrategy)
    kwargs = {"patch_size": 8} if strategy_class is MAEStrategy and name != "vit_tiny" else {}
    strategy = strategy_class(spatial_dims, **kwargs)
    images = _images(2, channels, *(32,) * spatial_dims)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for step in range(4):
        out = strategy.set_random_state(0)(net, images, epoch=1)  # the same corruption every step
        optimizer.zero_grad()
        out.loss.backward()
        if step == 0:
            for key, p in net.named_parameters():
                assert not p.requires_grad or (p.grad is not None and torch.isfinite(p.grad).all()), key
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
