"""Detection box targets follow the mask."""

from __future__ import annotations

import numpy as np
import torch

from frepa_monai.transforms import (
    MaskToBox,
    MaskToBoxd,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_mask_to_box_is_the_normalised_extent_of_the_foreground():
    mask = torch.zeros(1, 10, 20)
    mask[0, 2:5, 3:9] = 1
    mask[0, 7, 15] = 2  # a second component: the box covers both
    assert torch.equal(MaskToBox()(mask), torch.tensor([0.2, 0.15, 0.8, 0.8, 1.0]))
    assert torch.equal(MaskToBox()(torch.zeros(1, 10, 20)), torch.zeros(5))  # no object
    vol = np.zeros((1, 8, 4, 16), dtype=np.uint8)
    vol[0, 1:3, 0:4, 15] = 1
    box = MaskToBoxd("label", box_keys="box")({"label": vol})["box"]
    assert torch.equal(box, torch.tensor([1 / 8, 0.0, 15 / 16, 3 / 8, 1.0, 1.0, 1.0]))


def test_mask_to_box_follows_a_flip_of_the_mask():
    """Computed after the spatial transforms, the target box moves with the image: a flip mirrors it."""
    mask = torch.zeros(1, 16, 16)
    mask[0, 2:6, 9:12] = 1
    flipped = MaskToBox()(torch.flip(mask, dims=[1]))
    assert torch.allclose(flipped, torch.tensor([1 - 6 / 16, 9 / 16, 1 - 2 / 16, 12 / 16, 1.0]))
