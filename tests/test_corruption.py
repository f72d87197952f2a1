"""Properties of the Frepa corruptions (paper 3.1, 3.2), on real sample images where it matters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, ScaleIntensity

from frepa_monai.data import SAMPLE_DIR, load_index
from frepa_monai.frequency import filter_bank, squared_frequency_distance
from frepa_monai.metrics import FREQUENCY_BANDS, band_filters
from frepa_monai.transforms import (
    FREQUENCY,
    IMAGE,
    PAPER_SIZE,
    FrepaCorrupt,
    FrepaCorruptd,
    FrequencyDualMask,
    FrequencyDualMaskd,
    HessianFilter,
    HessianFilterd,
    HistogramEqualizedMask,
    HistogramEqualizedMaskd,
    scale_patch_size,
    scale_sigma_ratio,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftn(x.double(), dim=tuple(range(2, x.ndim)))


def patch_centre_distance(shape, patch_size: int) -> torch.Tensor:
    """Distance to the spectrum centre of the centre of each coefficient's spectrum patch, ``rfftn`` layout.

    Patches tile the ``fftshift``-ed spectrum from its corner (edge patches partial), as the spec says.
    """
    d2 = torch.zeros(())
    for axis, n in enumerate(shape):
        k = torch.fft.fftfreq(n, 1 / n).round()
        if axis == len(shape) - 1:
            k = k[: n // 2 + 1]
        first = torch.div(k + n // 2, patch_size, rounding_mode="floor") * patch_size
        centre = first + ((first + patch_size).clamp(max=n) - 1 - first) / 2 - n // 2
        d2 = d2 + centre.view([-1 if a == axis else 1 for a in range(len(shape))]) ** 2
    return d2.sqrt()


def zeroed_fraction_by_band(shape, draws: int, patch_size: int, band: float):
    """Empirical rate at which the transform zeroes coefficients, per radial band of their patch-centre
    distance ``d``, with the expected rate ``1 - exp(-d^2 / d_c^2)``."""
    nd = len(shape)
    x = torch.rand((draws, 1, *shape), dtype=torch.float64) + 0.1
    t = FrequencyDualMask(patch_size=patch_size, low_freq_perturb=False, spatial_dims=nd, literal_sizes=True)
    t.set_random_state(3)
    dims = tuple(range(2, 2 + nd))
    ratio = torch.fft.rfftn(t(x), dim=dims).abs() / torch.fft.rfftn(x, dim=dims).abs()
    zeroed = (ratio < 1e-6).double().mean(dim=(0, 1))
    d = patch_centre_distance(shape, patch_size).double()
    expected = 1 - torch.exp(-(d**2) / (0.2 * min(shape)) ** 2)
    bands = (d / band).long()
    return [(zeroed[bands == b].mean().item(), expected[bands == b].mean().item()) for b in bands.unique().tolist()]


class TestFrequencyDualMask:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("shape", [(3, 64, 64), (3, 61, 50), (1, 24, 17, 33), (2, 3, 40, 40)])
    def test_mean_kept_real_finite_same_type(self, device, shape):
        nd = 2 if len(shape) == 3 or shape[0] == 2 else 3
        x = torch.rand(shape, device=device)
        y = FrequencyDualMask(spatial_dims=nd).set_random_state(0)(x)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device and not torch.is_complex(y)
        assert torch.isfinite(y).all()
        axes = tuple(range(-nd, 0))
        torch.testing.assert_close(y.mean(dim=axes), x.mean(dim=axes), atol=1e-6, rtol=1e-5)
        assert (y - x).abs().mean() > 1e-3  # it did corrupt

    def test_numpy_float64_and_metatensor_kept(self):
        x = np.random.default_rng(0).random((3, 32, 32))
        y = FrequencyDualMask().set_random_state(0)(x)
        assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == x.shape
        assert abs(y.mean() - x.mean()) < 1e-12
        m = MetaTensor(torch.rand(1, 32, 32), meta={"filename_or_obj": "a.nii.gz"})
        out = FrequencyDualMask()(m)
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.nii.gz"

    def test_masking_rate_follows_exponential_law_2d(self):
        """Over many draws, the rate at which frequencies are zeroed follows 1 - exp(-d^2 / d_c^2) per band."""
        rates = zeroed_fraction_by_band((256, 256), draws=48, patch_size=16, band=16)
        assert len(rates) > 8 and rates[0][1] < 0.05 and rates[-1][1] > 0.95
        for zeroed, expected in rates:
            assert abs(zeroed - expected) < 0.05, (zeroed, expected)

    def test_masking_rate_follows_exponential_law_3d(self):
        rates = zeroed_fraction_by_band((64, 64, 48), draws=24, patch_size=8, band=8)
        assert len(rates) > 4
        for zeroed, expected in rates:
            assert abs(zeroed - expected) < 0.05, (zeroed, expected)

    @pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 63, 50), (2, 1, 15, 16, 17)])
    def test_mask_is_hermitian_so_every_coefficient_is_kept_or_zeroed_exactly(self, shape):
        x = torch.rand(shape, dtype=torch.float64)
        y = FrequencyDualMask(patch_size=4, low_freq_perturb=False, spatial_dims=len(shape) - 2)(x)
        ratio = spectrum(y).abs() / spectrum(x).abs()
        assert (((ratio - 1).abs() < 1e-8) | (ratio < 1e-8)).all()
        assert (ratio < 1e-8).any()
        # channels share the mask
        assert torch.equal(ratio[:, 0] < 1e-8, ratio[:, -1] < 1e-8)

    def test_low_frequency_perturbation_decays_with_distance_and_spares_dc(self):
        x = torch.rand(64, 1, 128, 128, dtype=torch.float64)
        y = FrequencyDualMask(high_freq_mask=False, spatial_dims=2).set_random_state(0)(x)
        delta = spectrum(y - x)[:, 0]
        assert delta[:, 0, 0].abs().max() < 1e-8
        # sigma_ratio 0.002 at the paper's 512 px is 0.002 * (512 / 128) ** (2 / 2) = 0.008 at 128 px
        sigma = 0.008 * spectrum(x)[:, 0].abs().flatten(1).amax(1)
        power = (delta.abs() ** 2 / sigma.view(-1, 1, 1) ** 2).mean(0)  # E|delta|^2 / sigma^2
        d2 = squared_frequency_distance((128, 128)).double()
        expected = torch.exp(-2 * d2 / (0.2 * 128) ** 2)
        for lo, hi in [(1, 8), (8, 16), (16, 24), (24, 32)]:
            band = (d2 >= lo**2) & (d2 < hi**2)
            assert power[band].mean().item() == pytest.approx(expected[band].mean().item(), rel=0.1)

    def test_switches_off_give_identity(self):
        x = torch.rand(3, 40, 40)
        assert torch.equal(FrequencyDualMask(high_freq_mask=False, low_freq_perturb=False)(x), x)
        assert torch.equal(FrequencyDualMask(prob=0.0)(x), x)

    def test_each_step_alone_changes_the_image(self):
        x = torch.rand(3, 64, 64)
        only_mask = FrequencyDualMask(low_freq_perturb=False).set_random_state(1)(x)
        only_noise = FrequencyDualMask(high_freq_mask=False).set_random_state(1)(x)
        assert (only_mask - x).abs().mean() > 1e-3 and (only_noise - x).abs().mean() > 1e-4

    def test_same_seed_same_output_other_seed_other_output(self):
        x = torch.rand(2, 3, 48, 48)
        a = FrequencyDualMask(spatial_dims=2).set_random_state(7)(x)
        b = FrequencyDualMask(spatial_dims=2).set_random_state(7)(x)
        c = FrequencyDualMask(spatial_dims=2).set_random_state(8)(x)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert not torch.allclose(a[0], a[1] - x[1] + x[0])  # images of a batch get their own draw

    def test_constant_and_tiny_images_give_no_nan(self):
        for x in (torch.full((3, 37, 29), 0.4), torch.zeros(1, 5, 6, 7), torch.rand(3, 3, 3)):
            y = FrequencyDualMask()(x)
            assert torch.isfinite(y).all()
        flat = FrequencyDualMask(low_freq_perturb=False)(torch.full((3, 37, 29), 0.4))  # only DC is non-zero
        torch.testing.assert_close(flat, torch.full((3, 37, 29), 0.4))
        # the noise scales with max|f| = DC
        perturbed = FrequencyDualMask(literal_sizes=True).set_random_state(0)(torch.full((3, 37, 29), 0.4))
        assert abs(perturbed.mean().item() - 0.4) < 1e-6 and 0 < (perturbed - 0.4).abs().max() < 0.4

    def test_real_image_keeps_mean_and_histogram_spread(self, fundus):
        image, _, _ = fundus
        y = FrequencyDualMask().set_random_state(0)(image)
        assert abs(y.mean().item() - image.mean().item()) < 1e-5
        rmse = (y - image).square().mean().sqrt().item()
        assert 0.005 < rmse < 0.3


class TestHistogramEqualizedMask:
    def test_masks_round_ratio_of_patches_and_keeps_other_pixels(self, fundus):
        image, _, _ = fundus  # 3 x 960 x 999 or so: partial edge patches included
        t = HistogramEqualizedMask().set_random_state(0)
        y, mask = t.call_with_mask(image)
        ps = t.patch_size_at(image.shape[1:])  # 32 at 512 px: 60 px at 960 px
        assert ps == round(32 * min(image.shape[1:]) / 512)
        assert mask.shape == (1, *image.shape[1:]) and mask.dtype == torch.bool
        grid = [math.ceil(s / ps) for s in image.shape[1:]]
        padded = torch.nn.functional.pad(
            mask.float(), (0, grid[1] * ps - image.shape[2], 0, grid[0] * ps - image.shape[1])
        )
        per_patch = padded.view(grid[0], ps, grid[1], ps).amax(dim=(1, 3))
        assert int(per_patch.sum()) == round(0.7 * grid[0] * grid[1])
        assert torch.equal(y[:, ~mask[0]], image[:, ~mask[0]])  # bit-identical outside the mask
        assert not torch.equal(y[:, mask[0]], image[:, mask[0]])

    def test_masked_patches_keep_mean_and_std_on_real_image(self, fundus):
        image, _, _ = fundus
        t = HistogramEqualizedMask(literal_sizes=True).set_random_state(1)
        y, mask = t.call_with_mask(image)
        h, w = image.shape[1:]
        checked = 0
        for i in range(0, h, 32):
            for j in range(0, w, 32):
                if not mask[0, i, j]:
                    continue
                before, after = image[:, i : i + 32, j : j + 32], y[:, i : i + 32, j : j + 32]
                for c in range(3):
                    mean0, std0 = before[c].mean().item(), before[c].std(unbiased=False).item()
                    mean1, std1 = after[c].mean().item(), after[c].std(unbiased=False).item()
                    assert abs(mean1 - mean0) <= 0.1 * abs(mean0) + 1e-6
                    assert abs(std1 - std0) <= 0.1 * std0 + 1e-6
                    checked += 1
        assert checked > 500

    def test_3d_patches_of_16_and_batches(self, volume):
        batch = torch.stack([volume, volume.flip(-1)])  # (2, 1, H, W, D)
        y, mask = HistogramEqualizedMask(spatial_dims=3).set_random_state(0).call_with_mask(batch)
        assert y.shape == batch.shape and mask.shape == (2, 1, *batch.shape[2:])
        n = math.prod(math.ceil(s / 16) for s in batch.shape[2:])
        full_patches = math.prod(s // 16 for s in batch.shape[2:])
        assert n * 0.6 < mask[0].float().mean() * n < n * 0.8 or full_patches < n
        assert not torch.equal(mask[0], mask[1].flip(-1))  # own draw per image
        assert torch.equal(y[~mask.expand_as(y)], batch[~mask.expand_as(batch)])

    def test_zero_fill_ablation(self):
        x = torch.rand(3, 64, 64) + 0.5
        y, mask = HistogramEqualizedMask(fill="zero").set_random_state(0).call_with_mask(x)
        assert (y[:, mask[0]] == 0).all() and (y[:, ~mask[0]] > 0).all()

    def test_mask_ratio_zero_is_identity_and_constant_patches_stay_constant(self):
        x = torch.rand(3, 50, 70)
        y, mask = HistogramEqualizedMask(mask_ratio=0.0).call_with_mask(x)
        assert torch.equal(y, x) and not mask.any()
        c = torch.full((1, 45, 33), 0.25)  # not divisible by 32: partial patches
        out = HistogramEqualizedMask()(c)
        assert torch.isfinite(out).all() and torch.allclose(out, c)

    def test_seeded_and_numpy(self):
        x = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
        a = HistogramEqualizedMask().set_random_state(5)(x)
        b = HistogramEqualizedMask().set_random_state(5)(x)
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and np.array_equal(a, b)

    def test_dict_twin_writes_mask(self):
        t = HistogramEqualizedMaskd(keys="image", mask_key="mask", literal_sizes=True).set_random_state(0)
        d = t({"image": torch.rand(1, 64, 64)})
        assert d["mask"].shape == (1, 64, 64) and d["mask"].float().mean() == 0.75  # round(0.7 * 4) = 3 of 4


# ----------------------------------------------------------------------------------------------------------
# sizes relative to the paper's working size (512 px in 2D, 128^3 in 3D)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_photographs():
    """Every sample 2D image at least 512 px on a side (28 CHASE_DB1 fundus photos, two X-rays, a shoulder MR, the
    skimage fundus photo) at its native pixel size, grey, in [0, 1]."""
    index = load_index()
    out = []
    for item in index["images_2d"] + index["chase"]:
        image = LoadImage(image_only=True, ensure_channel_first=True)(str(SAMPLE_DIR / item["image"]))
        if min(image.shape[1:]) >= 512:
            out.append(ScaleIntensity()(image.float().as_tensor().mean(0, keepdim=True)))
    return out


def centre_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Centre crops ``(N, 1, size, size)`` of each image, divided by their mean (the corruption's intensity unit:
    the noise scales with max|f| = DC)."""
    crops = []
    for image in images:
        h, w = image.shape[1:]
        crop = image[:, (h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]
        crops.append(crop / crop.mean())
    return torch.stack(crops).double()


def error_by_band(transform: FrequencyDualMask, images: torch.Tensor, draws: int) -> tuple[list[float], float]:
    """Mean over images and draws of the share of the corruption's error energy in each band of
    ``frequency_fidelity`` (low, mid, high), and the RMSE of the error."""
    filters = band_filters(tuple(images.shape[2:]))
    shares, squared = [], []
    for _ in range(draws):
        error = transform(images) - images
        energy = filter_bank(error, [filters[b] for b in FREQUENCY_BANDS]).square().flatten(2).sum(-1)  # (3, B)
        shares.append(energy / energy.sum(0))
        squared.append(error.square().mean())
    return torch.cat(shares, 1).mean(1).tolist(), math.sqrt(torch.stack(squared).mean().item())


def test_frequency_corruption_keeps_its_band_shares_and_rmse_at_any_image_size(native_photographs):
    """Crops of 512, 256 and 128 px of the same real photographs: with the sizes scaled from the paper's 512, the
    frequency dual mask puts the same share of its error into each band of ``frequency_fidelity`` and perturbs with
    the same RMSE (within 10%); with the paper's literal sizes, at 128 px twice the share lands in the low band and
    the perturbation is 4x weaker.

    Crops keep the photographs' pixel-scale statistics, so only the image size changes. Resized copies of the
    same photographs (area down-sampling from 512) hold relatively more energy at their own pixel scale, which
    the high-frequency masking takes away: there the high band's share grows from 0.16 to 0.19 at 128 px and the
    low band's falls from 0.12 to 0.10 (literal sizes: 0.85 in the low band), while the RMSE stays within 2%.
    """

    def at(size, literal):
        images = centre_crops(native_photographs, size)
        dual = FrequencyDualMask(spatial_dims=2, literal_sizes=literal).set_random_state(0)
        noise = FrequencyDualMask(high_freq_mask=False, spatial_dims=2, literal_sizes=literal).set_random_state(0)
        return error_by_band(dual, images, draws=8)[0], error_by_band(noise, images, draws=1)[1]

    assert len(native_photographs) == 32
    paper_shares, paper_rmse = at(512, literal=False)
    assert paper_shares[1] > 0.5 and 0.1 < paper_rmse < 0.5  # mostly mid-band error, a quarter of the mean
    for size in (256, 128):
        shares, rmse = at(size, literal=False)
        for band, share, paper in zip(FREQUENCY_BANDS, shares, paper_shares):
            assert share == pytest.approx(paper, rel=0.1), (size, band)
        assert rmse == pytest.approx(paper_rmse, rel=0.1), size
    literal_shares, literal_rmse = at(128, literal=True)
    assert literal_shares[0] > 1.8 * paper_shares[0]  # the "high-frequency" masking takes the low band
    assert literal_rmse == pytest.approx(paper_rmse / 4, rel=0.1)


def test_sizes_scale_from_the_paper_working_size():
    assert PAPER_SIZE == {2: 512, 3: 128}
    assert [scale_patch_size(16, (n, n)) for n in (512, 256, 128, 64)] == [16, 8, 4, 2]
    assert scale_patch_size(16, (48, 48, 48)) == 6 and scale_patch_size(16, (128, 128, 128)) == 16
    assert scale_patch_size(32, (128, 96)) == 6  # the smaller side sets the scale, as it does for d_c
    assert scale_patch_size(16, (8, 8)) == 1
    assert scale_sigma_ratio(0.002, (128, 128)) == pytest.approx(0.008)
    assert scale_sigma_ratio(0.002, (64, 64, 64)) == pytest.approx(0.002 * 2**1.5)
    t = FrepaCorruptd(spatial_dims=2).transform  # the one FrepaCorrupt the twin owns
    assert t.frequency.sizes_at((128, 128)) == (4, pytest.approx(0.008)) and t.image.patch_size_at((128, 128)) == 8
    literal = FrepaCorruptd(spatial_dims=3, literal_sizes=True).transform
    assert literal.frequency.sizes_at((48, 48, 48)) == (16, 0.002) and literal.image.patch_size_at((48, 48, 48)) == 16


def test_perturbation_rmse_of_a_real_volume_is_kept_at_48_and_64_voxels(volume):
    """3D: the low-frequency perturbation of one real volume resized to 128^3, 64^3 and 48^3 has one RMSE."""
    rmse = {}
    for size in (128, 64, 48):
        x = torch.nn.functional.interpolate(volume[None].double(), size=(size,) * 3, mode="area")
        noise = FrequencyDualMask(high_freq_mask=False, spatial_dims=3).set_random_state(0)
        rmse[size] = error_by_band(noise, x.expand(4, -1, -1, -1, -1), draws=1)[1]
    assert rmse[64] == pytest.approx(rmse[128], rel=0.1) and rmse[48] == pytest.approx(rmse[128], rel=0.1)


class TestBadInput:
    @pytest.mark.parametrize(
        "transform",
        [FrequencyDualMask(), HistogramEqualizedMask(), HessianFilter()],
        ids=lambda t: type(t).__name__,
    )
    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_nan_inf_raise_clear_error_naming_the_file(self, transform, bad):
        x = torch.rand(1, 32, 32)
        x[0, 3, 4] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            transform(x)
        with pytest.raises(ValueError, match="scan_007.nii.gz"):
            transform(MetaTensor(x, meta={"filename_or_obj": "/data/scan_007.nii.gz"}))

    def test_dict_twins_name_the_key(self):
        x = torch.rand(1, 16, 16)
        x[0, 0, 0] = float("nan")
        for t in (FrequencyDualMaskd(keys="ct"), HistogramEqualizedMaskd(keys="ct"), HessianFilterd(keys="ct")):
            with pytest.raises(ValueError, match="key 'ct'.*NaN or Inf"):
                t({"ct": x})
        with pytest.raises(ValueError, match="key 'ct'"):
            FrepaCorruptd(keys="ct")({"ct": x})

    def test_wrong_dimensionality(self):
        with pytest.raises(ValueError, match=r"shape \(5,\)"):
            FrequencyDualMask()(torch.rand(5))
        with pytest.raises(ValueError, match="spatial_dims=2"):
            HistogramEqualizedMask(spatial_dims=2)(torch.rand(1, 2, 3, 4, 5, 6))

    def test_huge_but_finite_values_are_not_flagged(self):
        x = torch.full((1, 8, 8), 3e37)  # the sum overflows to inf, every value is finite
        assert torch.isfinite(HessianFilter()(x)).all()


class TestFrepaCorruptd:
    def test_views_masks_strategies_and_hessian(self, fundus):
        image, _, _ = fundus
        image = image[:, :256, :256]
        t = FrepaCorruptd().set_random_state(0)
        d = t({"image": image})
        for v in (1, 2):
            assert d[f"image_view{v}"].shape == image.shape and d[f"mask_view{v}"].shape == (1, 256, 256)
            strategy = int(d[f"strategy_view{v}"])
            assert strategy in (FREQUENCY, IMAGE)
            if strategy == FREQUENCY:
                assert d[f"mask_view{v}"].all()
            else:
                assert 0.6 < d[f"mask_view{v}"].float().mean() < 0.8
        assert not torch.equal(d["image_view1"], d["image_view2"])
        torch.testing.assert_close(d["hessian"], HessianFilter()(image))
        assert torch.equal(d["image"], image)

    def test_strategies_are_drawn_with_equal_probability_per_view_and_image(self):
        t = FrepaCorruptd(spatial_dims=2).set_random_state(0)
        d = t({"image": torch.rand(200, 1, 64, 64)})
        s1, s2 = d["strategy_view1"], d["strategy_view2"]
        assert s1.shape == (200,) and 0.4 < (s1 == FREQUENCY).float().mean() < 0.6
        assert 0.3 < (s1 != s2).float().mean() < 0.7  # independent views
        assert d["mask_view1"][s1 == FREQUENCY].all() and not d["mask_view1"][s1 == IMAGE].all()

    def test_ablation_switches(self):
        x = {"image": torch.rand(40, 1, 32, 32)}
        only_image = FrepaCorruptd(frequency_mask=False, spatial_dims=2).set_random_state(0)(x)
        assert (only_image["strategy_view1"] == IMAGE).all()
        only_freq = FrepaCorruptd(image_mask=False, spatial_dims=2, hessian_key=None).set_random_state(0)(x)
        assert (only_freq["strategy_view2"] == FREQUENCY).all() and "hessian" not in only_freq
        identity = FrepaCorruptd(image_mask=False, high_freq_mask=False, low_freq_perturb=False, spatial_dims=2)(x)
        torch.testing.assert_close(identity["image_view1"], x["image"])
        with pytest.raises(ValueError, match="at least one"):
            FrepaCorruptd(frequency_mask=False, image_mask=False)

    def test_seeded(self):
        x = {"image": torch.rand(2, 32, 32, 32)}
        a = FrepaCorruptd().set_random_state(3)(x)
        b = FrepaCorruptd().set_random_state(3)(x)
        assert all(torch.equal(a[k], b[k]) for k in a)

    @pytest.mark.parametrize("device", DEVICES)
    def test_on_a_collated_batch_on_device(self, device):
        x = torch.rand(4, 3, 64, 64, device=device)
        d = FrepaCorruptd(spatial_dims=2).set_random_state(0)({"image": x})
        assert d["image_view1"].device == x.device and d["hessian"].shape == (4, 1, 64, 64)
        assert d["mask_view2"].device == x.device and d["strategy_view2"].device == x.device
        torch.testing.assert_close(
            d["image_view1"].mean(dim=(1, 2, 3))[d["strategy_view1"] == FREQUENCY],
            x.mean(dim=(1, 2, 3))[d["strategy_view1"] == FREQUENCY],
            atol=1e-5,
            rtol=1e-5,
        )


def test_histogram_masking_keeps_a_grey_image_grey():
    grey = torch.rand(1, 96, 96).expand(3, -1, -1).clone()  # grayscale repeated to 3 channels (paper section 4)
    y, mask = HistogramEqualizedMask().set_random_state(0).call_with_mask(grey)
    assert mask.any() and torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])


# ----------------------------------------------------------------------------------------------------------
# dictionary twins: one draw shared by every key (MONAI's default), the array transform underneath
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("twin", [FrequencyDualMaskd, HistogramEqualizedMaskd], ids=lambda c: c.__name__)
def test_twins_share_one_draw_across_keys_unless_told_otherwise(twin):
    """Two keys holding one image get the same corruption; ``shared_draw=False`` draws per key, and the first key
    then gets what the array transform with the same seed gives."""
    x = torch.rand(1, 64, 64)
    shared = twin(keys=["a", "b"], spatial_dims=2).set_random_state(3)({"a": x, "b": x.clone()})
    assert not torch.equal(shared["a"], x) and torch.equal(shared["a"], shared["b"])
    apart = twin(keys=["a", "b"], spatial_dims=2, shared_draw=False).set_random_state(3)({"a": x, "b": x.clone()})
    assert not torch.equal(apart["a"], apart["b"])
    array = twin(keys="a", spatial_dims=2).transform.__class__
    reference = array(spatial_dims=2).set_random_state(3)(x)
    assert torch.equal(apart["a"], reference) and torch.equal(shared["a"], reference)


def test_frepa_corruptd_is_its_array_transform_plus_the_hessian_channel(fundus):
    image = fundus[0][:, :128, :128]
    d = FrepaCorruptd(keys="image", spatial_dims=2).set_random_state(11)({"image": image})
    views = FrepaCorrupt(spatial_dims=2).set_random_state(11)(image)
    for i in (1, 2):
        assert torch.equal(d[f"image_view{i}"], views.views[i - 1])
        assert torch.equal(d[f"mask_view{i}"], views.masks[i - 1])
        assert int(d[f"strategy_view{i}"]) == int(views.strategies[i - 1])
    assert torch.equal(d["hessian"], HessianFilter(spatial_dims=2)(image))
    assert "hessian" not in FrepaCorruptd(keys="image", hessian_key=None)({"image": image})
