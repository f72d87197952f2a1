"""The detection bundles' objective: GIoU of the box on images that hold an object, plus objectness BCE."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.data.box_utils import box_pair_giou

__all__ = ["giou_loss", "DetectionLoss"]


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - GIoU`` of paired boxes ``(N, 2 * spatial_dims)``, by MONAI's ``box_pair_giou``."""
    if pred_boxes.shape[0] == 0:
        return pred_boxes.sum() * 0.0
    return (1.0 - box_pair_giou(pred_boxes, target_boxes)).mean()


class DetectionLoss(nn.Module):
    """GIoU on the images that hold an object plus binary cross-entropy on objectness.

    ``forward(pred, target)``: both ``(B, 2 * spatial_dims + 1)`` as :class:`~frepa_monai.networks.DetectionHead`
    outputs, ``target`` with normalised boxes and objectness 1 (object) or 0 (no object; its box is ignored).
    """

    def __init__(self, giou_weight: float = 1.0, objectness_weight: float = 1.0) -> None:
        super().__init__()
        self.giou_weight = giou_weight
        self.objectness_weight = objectness_weight
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        has_object = target[:, -1] > 0.5
        box = giou_loss(pred[has_object, :-1], target[has_object, :-1].to(pred))
        objectness = self.bce(pred[:, -1], target[:, -1].to(pred))
        return self.giou_weight * box + self.objectness_weight * objectness
