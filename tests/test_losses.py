"""Properties of the Frepa losses (paper section 3.2, Eq. 7-11)."""

from __future__ import annotations

import math

import pytest
import torch

from frepa_monai.losses import (
    DetectionLoss,
    EmbeddingConsistencyLoss,
    FocalFrequencyLoss,
    FrepaLoss,
    GradientLoss,
    HierarchicalFrequencyLoss,
    MaskedRMSELoss,
    giou_loss,
)
from frepa_monai.networks import DetectionHead

IMAGE_LOSSES = [MaskedRMSELoss, GradientLoss, HierarchicalFrequencyLoss, FocalFrequencyLoss]


def cosine_pattern(shape, frequency: int, amplitude: float = 0.1) -> torch.Tensor:
    """``amplitude * cos(2 pi frequency x / W)`` along the last axis, broadcast to ``(1, 1, *shape)``."""
    x = torch.arange(shape[-1], dtype=torch.float64)
    return (amplitude * torch.cos(2 * math.pi * frequency * x / shape[-1])).expand(1, 1, *shape).clone()


@pytest.mark.parametrize("loss", IMAGE_LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", [(2, 3, 32, 40), (1, 1, 17, 23), (2, 1, 12, 13, 14)])
def test_zero_for_identical_inputs_positive_otherwise_finite_gradient(loss, shape):
    target = torch.rand(shape)
    assert loss()(target.clone(), target).item() == 0.0
    pred = target.clone().requires_grad_(True)
    loss()(pred, target).backward()  # the gradient at the optimum is finite (no sqrt(0) NaN)
    assert torch.isfinite(pred.grad).all()
    other = torch.rand(shape, requires_grad=True)
    value = loss()(other, target)
    value.backward()
    assert value.item() > 0 and torch.isfinite(other.grad).all() and other.grad.abs().sum() > 0


def test_masked_rmse_equals_hand_computed_values():
    pred, target = torch.zeros(2, 1, 2, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(2, 1, 2, 2)
    mask = torch.tensor([[[[True, False], [False, True]]], [[[True, True], [True, True]]]])
    per_image = MaskedRMSELoss(reduction="none")(pred, target, mask)
    torch.testing.assert_close(per_image, torch.tensor([math.sqrt((1 + 16) / 2), math.sqrt(30 / 4)]))
    # no mask = every pixel, and the channel-shared mask covers all channels
    torch.testing.assert_close(MaskedRMSELoss()(pred, target), torch.tensor(math.sqrt(30 / 4)))
    rgb_pred, rgb_target = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert MaskedRMSELoss()(rgb_pred, rgb_target, mask[:1]).item() == pytest.approx(1.0)
    # an image with nothing masked contributes zero
    assert MaskedRMSELoss()(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_gradient_loss_ignores_intensity_offsets_and_sees_edges():
    target = torch.rand(1, 1, 32, 32)
    assert GradientLoss()(target + 0.3, target).item() == pytest.approx(0.0, abs=1e-6)
    assert MaskedRMSELoss()(target + 0.3, target).item() == pytest.approx(0.3, abs=1e-6)
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1.0
    # a vertical step: |diff| = 1 on one column of 31 x 32 differences along the last axis, 0 along the other
    assert GradientLoss()(step, torch.zeros_like(step)).item() == pytest.approx((32 / (32 * 31)) / 2)


@pytest.mark.parametrize("shape", [(64, 64), (64, 48), (24, 24, 24)])
def test_hfl_weights_high_frequency_error_more_than_low_frequency_error_of_equal_energy(shape):
    target = torch.zeros(1, 1, *shape, dtype=torch.float64)
    low, high = cosine_pattern(shape, 2), cosine_pattern(shape, shape[-1] // 4)
    assert low.square().sum().item() == pytest.approx(high.square().sum().item())
    hfl = HierarchicalFrequencyLoss()
    assert hfl(high, target).item() > 2 * hfl(low, target).item()
    # for comparison: RMSE cannot tell them apart
    assert MaskedRMSELoss()(high, target).item() == pytest.approx(MaskedRMSELoss()(low, target).item())


def test_hfl_matches_its_definition_on_a_pure_tone():
    """A cosine of frequency k passes filter c with gain 1 - exp(-k^2 / (c * N)^2); HFL is the mean |.| of the rest."""
    n, k, amplitude = 64, 8, 0.5
    tone = cosine_pattern((n, n), k, amplitude)
    gains = [1 - math.exp(-(k**2) / (c * n) ** 2) for c in (0.1, 0.2, 0.3, 0.4, 0.5)]
    mean_abs_cos = torch.cos(2 * math.pi * k * torch.arange(n) / n).abs().mean().item()
    expected = amplitude * mean_abs_cos * sum(gains) / len(gains)
    assert HierarchicalFrequencyLoss()(tone, torch.zeros_like(tone)).item() == pytest.approx(expected, rel=1e-6)


def test_focal_frequency_loss_focuses_on_the_hard_frequency():
    target = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    big, small = cosine_pattern((32, 32), 4, 0.2), cosine_pattern((32, 32), 9, 0.05)
    ffl = FocalFrequencyLoss()
    # the weight normalises the largest error to 1: doubling all errors multiplies the loss by 4, not more
    assert ffl(2 * (big + small), target).item() == pytest.approx(4 * ffl(big + small, target).item())
    # the small error is down-weighted relative to a plain spectral MSE
    plain = lambda e: torch.fft.fftn(e, dim=(2, 3), norm="ortho").abs().square().mean().item()  # noqa: E731
    assert ffl(small, target) / ffl(big, target) < plain(small) / plain(big)


def test_js_divergence_is_symmetric_bounded_and_zero_for_equal_embeddings():
    torch.manual_seed(0)
    a, b = torch.randn(4, 32, 5, 5), torch.randn(4, 32, 5, 5)
    con = EmbeddingConsistencyLoss()
    assert con(a, b).item() == pytest.approx(con(b, a).item(), rel=1e-6)
    assert con(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert 0 < con(a, b).item() < math.log(2)
    # disjoint one-hot distributions reach ln 2, and never exceed it
    one_hot = torch.full((1, 2, 3, 3), -1e4)
    one_hot[:, 0] = 1e4
    assert con(one_hot, one_hot.flip(1)).item() == pytest.approx(math.log(2), rel=1e-6)
    assert con(100 * a, -100 * a).item() <= math.log(2) + 1e-6
    # tokens (B, N, F) with the feature axis last, 3D feature maps
    assert con(a.flatten(2).transpose(1, 2), b.flatten(2).transpose(1, 2)).shape == ()
    assert EmbeddingConsistencyLoss(dim=2)(a.flatten(2).transpose(1, 2), b.flatten(2).transpose(1, 2)).item() == (
        pytest.approx(con(a, b).item(), rel=1e-5)
    )
    assert con(torch.randn(2, 8, 3, 3, 3), torch.randn(2, 8, 3, 3, 3)).item() > 0


class TestFrepaLoss:
    def setup_method(self):
        torch.manual_seed(0)
        self.target = torch.rand(2, 3, 32, 32)
        self.recons = [torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)]
        self.masks = [torch.rand(2, 1, 32, 32) > 0.3, None]
        self.embeddings = (torch.randn(2, 16, 2, 2), torch.randn(2, 16, 2, 2))

    def terms(self, loss: FrepaLoss, epoch: int):
        return loss(self.recons, self.target, self.masks, self.embeddings, epoch=epoch)

    def test_total_is_eq_11_with_weights_1_1_05(self):
        out = self.terms(FrepaLoss(), epoch=10)
        expected = out["rmse"] + out["grad"] + out["hfl"] + 0.5 * out["con"]
        torch.testing.assert_close(out["loss"], expected)
        assert all(out[k] > 0 for k in ("rmse", "grad", "hfl", "con"))
        rmse = (
            MaskedRMSELoss()(self.recons[0], self.target, self.masks[0]) + MaskedRMSELoss()(self.recons[1], self.target)
        ) / 2
        torch.testing.assert_close(out["rmse"], rmse)

    def test_consistency_is_off_for_the_first_five_epochs(self):
        loss = FrepaLoss()
        for epoch in range(1, 6):
            out = self.terms(loss, epoch)
            assert out["con"].item() == 0.0
            torch.testing.assert_close(out["loss"], out["rmse"] + out["grad"] + out["hfl"])
        assert self.terms(loss, 6)["con"].item() > 0
        assert FrepaLoss(consistency_warmup_epochs=0).consistency_active(1)

    @pytest.mark.parametrize("term", ["grad", "hfl", "con"])
    def test_ablation_switches_remove_a_term(self, term):
        full = self.terms(FrepaLoss(), epoch=10)
        ablated = self.terms(FrepaLoss(**{f"use_{term}": False}), epoch=10)
        assert ablated[term].item() == 0.0
        weight = {"grad": 1.0, "hfl": 1.0, "con": 0.5}[term]
        torch.testing.assert_close(ablated["loss"], full["loss"] - weight * full[term])

    def test_identical_views_and_3d(self):
        target = torch.rand(1, 1, 16, 16, 16)
        out = FrepaLoss()([target, target], target, embeddings=(torch.ones(1, 4, 2, 2, 2),) * 2, epoch=9)
        assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)

    def test_mismatched_inputs_raise(self):
        with pytest.raises(ValueError, match="differs from target"):
            FrepaLoss()([torch.rand(1, 3, 8, 8)], torch.rand(1, 3, 8, 9))
        with pytest.raises(ValueError, match="2 reconstructions but 1 masks"):
            FrepaLoss()(self.recons, self.target, masks=[None])


def test_giou_loss_and_detection_loss():
    box = torch.tensor([[0.1, 0.1, 0.5, 0.6]])
    assert giou_loss(box, box).item() == pytest.approx(0.0, abs=1e-6)
    far = torch.tensor([[0.7, 0.7, 0.9, 0.9]])
    assert giou_loss(box, far).item() > 1.0  # disjoint boxes: GIoU < 0
    head = DetectionHead(16, 3)
    target = torch.tensor([[0.2, 0.2, 0.2, 0.6, 0.7, 0.5, 1.0], [0, 0, 0, 0, 0, 0, 0.0]])
    loss = DetectionLoss()(head(torch.rand(2, 16, 2, 2, 2)), target)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in head.parameters())
