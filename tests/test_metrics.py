"""Frequency fidelity and band R^2 (paper Fig. 7) on signals whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from frepa_monai.metrics import (
    FREQUENCY_BANDS,
    BandR2Metric,
    DetectionMetric,
    FrequencyFidelityMetric,
    band_energies,
    band_filters,
    band_r2,
    detection_scores,
    frequency_fidelity,
)


def tone(shape, frequency: int, amplitude: float) -> torch.Tensor:
    x = torch.arange(shape[-1], dtype=torch.float64)
    return (amplitude * torch.cos(2 * math.pi * frequency * x / shape[-1])).expand(1, 1, *shape).clone()


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 1, 33, 40), (2, 1, 16, 20, 24)])
def test_perfect_reconstruction_scores_one_in_every_band(shape):
    image = torch.rand(shape)
    rho = frequency_fidelity(image.clone(), image)
    assert set(rho) == {"rho_low", "rho_mid", "rho_high"}
    for value in rho.values():
        assert value.shape == (shape[0],)
        torch.testing.assert_close(value, torch.ones(shape[0]))


def test_bands_partition_the_spectrum():
    filters = band_filters((64, 48))
    torch.testing.assert_close(filters["low"] + filters["mid"] + filters["high"], torch.ones_like(filters["low"]))
    assert (filters["mid"] >= 0).all() and filters["low"][0, 0] == 1 and filters["high"][0, 0] == 0


def test_high_frequency_error_lowers_mainly_rho_high():
    image = torch.rand(1, 1, 128, 128, dtype=torch.float64)
    recon = image + tone((128, 128), 50, 0.05)  # far above the high-pass cut-off of 0.25 * 128 = 32
    rho = frequency_fidelity(recon, image)
    assert rho["rho_high"].item() < 0.97
    assert rho["rho_low"].item() > 0.9999 and rho["rho_mid"].item() > rho["rho_high"].item() + 0.02


def test_low_frequency_error_lowers_mainly_rho_low():
    image = torch.rand(1, 1, 128, 128, dtype=torch.float64)
    rho = frequency_fidelity(image + 0.05, image)  # a DC offset: all low frequency
    assert rho["rho_low"].item() == pytest.approx(0.95)
    assert rho["rho_mid"].item() == pytest.approx(1.0) and rho["rho_high"].item() == pytest.approx(1.0)


def test_rho_is_one_minus_the_filtered_rmse_of_a_tone():
    """A tone of frequency k passes O_high with gain 1 - exp(-k^2 / c^2): the RMSE is amplitude * gain / sqrt(2)."""
    n, k, amplitude = 128, 40, 0.1
    rho = frequency_fidelity(tone((n, n), k, amplitude), torch.zeros(1, 1, n, n, dtype=torch.float64))
    gain = 1 - math.exp(-(k**2) / (0.25 * n) ** 2)
    assert rho["rho_high"].item() == pytest.approx(1 - amplitude * gain / math.sqrt(2), rel=1e-6)  # float32 filters


def test_cumulative_metric_averages_per_image_values_over_batches():
    metric = FrequencyFidelityMetric(band="high")
    a, b = torch.rand(2, 1, 32, 32), torch.rand(3, 1, 32, 32)
    noisy = b + 0.2 * torch.randn_like(b)
    metric(a, a)
    metric(noisy, b)
    expected = torch.cat([torch.ones(2), frequency_fidelity(noisy, b)["rho_high"]]).mean()
    assert metric.aggregate().item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() < 1.0
    with pytest.raises(ValueError, match="band must be"):
        FrequencyFidelityMetric(band="ultra")


# ---------------------------------------------------------------- band R^2


@pytest.mark.parametrize("shape", [(3, 3, 64, 64), (2, 1, 33, 40), (2, 1, 16, 20, 24)])
def test_band_r2_is_zero_for_the_mean_one_for_the_image_and_negative_when_worse(shape):
    image = torch.rand(shape, dtype=torch.float64)
    mean = image.mean(dim=tuple(range(2, image.ndim)), keepdim=True).expand_as(image)
    for band in FREQUENCY_BANDS:
        assert band_r2(image.clone(), image, band).shape == (shape[0],)
        torch.testing.assert_close(band_r2(image.clone(), image, band), torch.ones(shape[0], dtype=torch.float64))
        assert torch.equal(band_r2(mean, image, band), torch.zeros(shape[0], dtype=torch.float64))
        # the mirror image about the mean errs by twice the image's own deviation: 1 - 4 = -3
        torch.testing.assert_close(band_r2(2 * mean - image, image, band), torch.full((shape[0],), -3.0).double())


def test_band_r2_separates_the_bands_and_ignores_the_intensity_scale():
    image = torch.rand(1, 1, 128, 128, dtype=torch.float64)
    noisy = image + tone((128, 128), 50, 0.3)  # above the high-pass cut-off of 0.25 * 128 = 32
    assert band_r2(noisy, image, "high").item() < 0.7
    assert band_r2(noisy, image, "low").item() > 0.9999 and band_r2(noisy, image, "mid").item() > 0.95
    offset = band_r2(image + 0.05, image, "low")  # a DC error: the low band holds the image's mean
    assert offset.item() < 0.9 and band_r2(image + 0.05, image, "mid").item() == pytest.approx(1.0)
    for band in FREQUENCY_BANDS:
        torch.testing.assert_close(band_r2(7 * noisy, 7 * image, band), band_r2(noisy, image, band))
    assert torch.isnan(band_r2(torch.rand(1, 1, 16, 16), torch.full((1, 1, 16, 16), 0.3), "mid")).all()
    with pytest.raises(ValueError, match="band must be"):
        band_r2(image, image, "ultra")


def test_band_r2_metric_pools_the_energies_of_every_image():
    target = torch.rand(3, 1, 32, 32)
    pred = target + 0.1 * torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    metric = BandR2Metric(band="mid")
    metric(pred[:2], target[:2])
    metric([pred[2]], [target[2]])  # decollated items, as MONAI's handlers pass them
    error, spread = band_energies(pred, target, "mid")
    assert metric.aggregate().item() == pytest.approx(1 - error.sum().item() / spread.sum().item(), rel=1e-6)
    single = BandR2Metric(band="high")
    single(pred[:1], target[:1])
    assert single.aggregate().item() == pytest.approx(band_r2(pred[:1], target[:1], "high").item(), rel=1e-6)
    # a nearly flat crop has a huge negative R^2 of its own, but carries almost no weight in the pool
    flat = torch.full((1, 1, 32, 32), 0.5) + 1e-3 * torch.rand(1, 1, 32, 32)
    assert band_r2(flat + 0.01, flat, "low").item() < -10
    metric([flat[0] + 0.01], [flat[0]])
    assert metric.aggregate().item() > 0.5


# ---------------------------------------------------------------- detection metrics


def _boxes():
    """Four images, 2D boxes in pixels: a perfect hit, a half-overlapping box, a miss, and an image without
    object. Objectness logits: +4 (positive), +4, -4 (negative), +4 (a false positive)."""
    pred = torch.tensor(
        [
            [10.0, 10.0, 20.0, 20.0, 4.0],  # == target: IoU 1
            [0.0, 0.0, 10.0, 10.0, 4.0],  # target [0, 0, 10, 20]: IoU 100 / 200 = 0.5
            [30.0, 30.0, 40.0, 40.0, -4.0],  # target [0, 0, 5, 5]: IoU 0
            [5.0, 5.0, 8.0, 8.0, 4.0],  # no object
        ]
    )
    target = torch.tensor(
        [
            [10.0, 10.0, 20.0, 20.0, 1.0],
            [0.0, 0.0, 10.0, 20.0, 1.0],
            [0.0, 0.0, 5.0, 5.0, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    return pred, target


def test_detection_scores_match_hand_computed_values():
    pred, target = _boxes()
    scores = detection_scores(pred, target)
    assert scores["iou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3, abs=1e-5)
    assert scores["detection_ratio"] == pytest.approx(2 / 3)  # IoU >= 0.5: images 0 and 1
    assert scores["sensitivity"] == pytest.approx(2 / 3)  # both hits predicted positive
    assert scores["precision"] == pytest.approx(2 / 3)  # 3 positive predictions, one on an image without object
    # GIoU of the miss: enclosing box [0, 0, 40, 40] = 1600, union 125: 0 - (1600 - 125) / 1600
    assert scores["giou"] == pytest.approx((1.0 + 0.5 + (0 - 1475 / 1600)) / 3, abs=1e-5)
    strict = detection_scores(pred, target, iou_threshold=0.6)
    assert strict["detection_ratio"] == pytest.approx(1 / 3) and strict["sensitivity"] == pytest.approx(1 / 3)


def test_detection_scores_in_3d_and_undefined_ratios():
    pred = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, -1.0]])
    target = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 1.0]])
    scores = detection_scores(pred, target)
    assert scores["iou"] == pytest.approx(0.5, abs=1e-5) and scores["detection_ratio"] == 1.0
    assert scores["sensitivity"] == 0.0 and math.isnan(scores["precision"])  # nothing predicted positive
    no_object = detection_scores(pred, torch.zeros_like(target))
    assert math.isnan(no_object["iou"]) and math.isnan(no_object["sensitivity"])


def test_detection_metric_accumulates_decollated_items():
    pred, target = _boxes()
    expected = detection_scores(pred, target)
    for name, value in expected.items():
        metric = DetectionMetric(metric_name=name)
        metric(list(pred[:2]), list(target[:2]))  # decollated items, as evaluators pass them
        metric(pred[2:], target[2:])  # and a batch
        assert metric.aggregate().item() == pytest.approx(value, abs=1e-5), name
        metric.reset()
        assert math.isnan(metric.aggregate().item())
    with pytest.raises(ValueError, match="metric_name"):
        DetectionMetric(metric_name="map")
    with pytest.raises(ValueError, match=r"\(B, 5\) or \(B, 7\)"):
        DetectionMetric()(pred[:, :4], target[:, :4])


# ---------------------------------------------------------------- the bundles' metric configs


def _bundle_metrics(bundle: str, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Run ``bundle``'s validation postprocessing and metric handlers (from its train.json) on fixed
    ``(pred, label)`` items, one per iteration as the evaluator sees them."""
    from pathlib import Path

    from ignite.engine import Engine
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "train.json"))
    post = config.get_parsed_content("validate#postprocessing")
    handlers = {
        **config.get_parsed_content("validate#key_metric"),
        **config.get_parsed_content("validate#additional_metrics", default={}),
    }
    engine = Engine(lambda e, item: [post({"pred": item[0], "label": item[1]})])
    for name, handler in handlers.items():
        handler.attach(engine, name)
    engine.run(items, max_epochs=1)
    return {k: float(v) for k, v in engine.state.metrics.items()}


def test_segmentation_bundle_dice_matches_hand_computed_values():
    """The 3D segmentation bundle's DSC (mean and per class) on fixed masks: 2 |P & L| / (|P| + |L|)."""
    label = torch.zeros(1, 6, 4, 4, dtype=torch.long)
    for c in range(6):
        label[0, c] = c  # class c fills slab c: 16 voxels each
    pred_classes = label.clone()
    pred_classes[0, 1, :2] = 2  # 8 voxels of class 1 called class 2
    logits = torch.nn.functional.one_hot(pred_classes[0], 6).permute(3, 0, 1, 2).float()
    metrics = _bundle_metrics("frepa_segmentation_3d", [(logits, label)])
    dice = {1: 2 * 8 / (8 + 16), 2: 2 * 16 / (24 + 16), 3: 1.0, 4: 1.0, 5: 1.0}
    assert metrics["val_dice_frontal"] == pytest.approx(dice[1])
    assert metrics["val_dice_parietal_occipital"] == pytest.approx(dice[2])
    assert metrics["val_dice_cerebellum"] == pytest.approx(1.0)
    assert metrics["val_mean_dice"] == pytest.approx(sum(dice.values()) / 5)


def test_classification_bundle_accuracy_and_auc_match_hand_computed_values():
    """ACC and AUC of the 2D classification bundle's metric handlers over four fixed predictions."""
    logits = [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.0])]
    labels = [torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1])]
    metrics = _bundle_metrics("frepa_classification_2d", list(zip(logits, labels)))
    # predicted classes 0, 1, 1, 0 against 0, 0, 1, 1: 2 of 4 right. AUC: P(p1 of a positive > p1 of a negative)
    # with p1 = softmax(logits)[1] = 0.12, 0.73 (negatives), 0.95, 0.27 (positives): 3 of the 4 pairs -> 0.75
    assert metrics["val_acc"] == pytest.approx(0.5)
    assert metrics["val_auc"] == pytest.approx(0.75)
