"""The Hessian ridge channel (paper Eq. 6) on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from frepa_monai.transforms import (
    HessianFilter,
    HessianFilterd,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class TestHessianFilter:
    def test_high_on_vessels_low_on_flat_background_of_real_fundus(self, fundus):
        image, vessels, fov = fundus
        ridges = HessianFilter()(image)[0]
        assert ridges.shape == vessels.shape and 0.0 <= ridges.min() and ridges.max() == 1.0
        inside = fov & ~torch.nn.functional.max_pool2d(vessels[None, None].float(), 9, 1, 4)[0, 0].bool()
        # measured on Image_01L: 0.100 on vessels, 0.035 on background, ROC AUC 0.82
        assert ridges[vessels].mean() > 2.5 * ridges[inside].mean()
        scores = torch.cat([ridges[vessels], ridges[inside]])
        truth = torch.cat([torch.ones(int(vessels.sum())), torch.zeros(int(inside.sum()))])
        assert compute_roc_auc(scores, truth) > 0.8

    def test_3d_tube_is_ridge_and_flat_volume_is_zero(self):
        grid = torch.stack(torch.meshgrid(*[torch.arange(32.0)] * 3, indexing="ij"))
        tube = torch.exp(-((grid[0] - 16) ** 2 + (grid[1] - 16) ** 2) / 4.0)[None]  # along the last axis
        ridges = HessianFilter()(tube)[0]
        assert ridges[16, 16, 8:24].mean() > 0.8 and ridges[4, 4, :].max() < 0.05
        assert torch.equal(HessianFilter()(torch.full((1, 20, 20, 20), 3.0)), torch.zeros(1, 20, 20, 20))

    def test_polarity(self):
        line = torch.zeros(1, 48, 48)
        line[0, 24, :] = 1.0  # a bright ridge
        assert HessianFilter(polarity="bright")(line)[0, 24, 10:38].mean() > 0.5
        assert HessianFilter(polarity="dark")(line)[0, 24, 10:38].max() < 0.05
        assert HessianFilter(polarity="dark")(-line)[0, 24, 10:38].mean() > 0.5

    def test_batched_numpy_and_dict_append(self):
        x = np.random.default_rng(0).random((2, 3, 40, 40)).astype(np.float32)
        out = HessianFilter(spatial_dims=2)(x)
        assert isinstance(out, np.ndarray) and out.shape == (2, 1, 40, 40)
        np.testing.assert_allclose(out[1], HessianFilter()(x[1]), atol=1e-6)
        d = HessianFilterd(keys="image", append=True)({"image": torch.rand(3, 32, 32)})
        assert d["image"].shape == (4, 32, 32)
        d = HessianFilterd(keys="image")({"image": torch.rand(1, 16, 16, 16)})
        assert d["image_hessian"].shape == (1, 16, 16, 16)


def test_autocast_does_not_lower_the_precision_of_the_channel(fundus):
    """The strategy computes the channel inside the (AMP) step: under autocast it stays the float32 channel (the
    second differences of a bfloat16 smoothing would keep about 2 of its 8 significant bits)."""
    image = fundus[0][None]
    expected = HessianFilter(spatial_dims=2)(image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = HessianFilter(spatial_dims=2)(image)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("nd", [2, 3])
def test_closed_form_eigenvalues_match_eigvalsh_ordered_by_magnitude(nd):
    from frepa_monai.transforms.hessian import _sorted_eigenvalues

    torch.manual_seed(0)
    a = torch.randn(4000, nd, nd, dtype=torch.float64)
    sym = (a + a.transpose(1, 2)) / 2
    sym[:500] = torch.diag_embed(torch.randn(500, nd, dtype=torch.float64).round())  # repeated and zero eigenvalues
    fields = {(i, j): sym[:, i, j] for i in range(nd) for j in range(i, nd)}
    got = torch.stack(_sorted_eigenvalues(fields, nd), dim=1)
    expected = torch.linalg.eigvalsh(sym)
    expected = expected.gather(1, expected.abs().argsort(dim=1, stable=True))
    torch.testing.assert_close(got.abs(), expected.abs(), rtol=1e-6, atol=1e-6)  # magnitudes: ties may swap signs
    torch.testing.assert_close(got.sum(1), expected.sum(1), rtol=1e-6, atol=1e-6)  # the trace
