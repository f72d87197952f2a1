"""Detection transforms of the downstream detection bundles: the box target of a mask (training) and the
predicted box in the input file's own coordinates (inference), as MONAI keeps them apart in
``monai.apps.detection.transforms``."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor, create_file_basename
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple

from frepa_monai.transforms.utils import source_of

__all__ = ["MaskToBox", "MaskToBoxd", "original_grid_box", "DetectionBoxToOriginald", "SaveBoxJSONd"]

logger = logging.getLogger(__name__)


class MaskToBox(Transform):
    """The detection target of a mask: the box around all its foreground, normalised, plus objectness.

    ``(1, *spatial)`` mask -> ``(2 * spatial_dims + 1,)`` float tensor ``[lo_1 .. lo_n, hi_1 .. hi_n, objectness]``
    in :class:`~frepa_monai.networks.heads.DetectionHead`'s format: the corners of the smallest box holding every
    voxel ``> 0`` in array index order (MONAI's corner mode ``xyxy`` / ``xyzxyz``, minimum inclusive, maximum
    exclusive) divided by the spatial size, so in [0, 1]; objectness 1. An empty mask gives zeros with
    objectness 0 (its box is ignored by :class:`~frepa_monai.networks.heads.DetectionLoss`). Computed after the
    spatial transforms, the box follows every crop, resize and flip of the mask.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, mask: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(mask, track_meta=False)
        if x.ndim not in (3, 4):
            raise ValueError(f"mask {source_of(mask)}has shape {tuple(x.shape)}; expected (C, *spatial), 2D or 3D.")
        foreground = (x > 0).any(dim=0)
        n = foreground.ndim
        out = torch.zeros(2 * n + 1, dtype=torch.float32)
        if not bool(foreground.any()):
            return out
        for axis in range(n):
            others = tuple(a for a in range(n) if a != axis)
            hit = torch.nonzero(foreground.any(dim=others) if others else foreground).flatten()
            size = foreground.shape[axis]
            out[axis] = hit[0].item() / size
            out[n + axis] = (hit[-1].item() + 1) / size
        out[-1] = 1.0
        return out


class MaskToBoxd(MapTransform):
    """Dictionary twin of :class:`MaskToBox`: replaces each mask under ``keys`` by its box target (or writes it
    to ``box_keys``)."""

    def __init__(
        self, keys: KeysCollection, box_keys: KeysCollection | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = self.keys if box_keys is None else ensure_tuple(box_keys)
        if len(self.box_keys) != len(self.keys):
            raise ValueError("box_keys must name one output per key.")
        self.to_box = MaskToBox()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, box_key in self.key_iterator(d, self.box_keys):
            d[box_key] = self.to_box(d[key])
        return d


def _homogeneous(points: np.ndarray, dims: int) -> np.ndarray:
    """``(P, n)`` voxel coordinates -> ``(P, dims + 1)``: zeros for the missing axes (a 2D slice with a 3D
    affine sits at index 0 of its third axis) and a trailing 1."""
    out = np.zeros((points.shape[0], dims + 1))
    out[:, : points.shape[1]] = points
    out[:, -1] = 1.0
    return out


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The ``2 ** n`` corners ``(2 ** n, n)`` of the box ``[lo, hi]``."""
    return np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)


def original_grid_box(pred: torch.Tensor, image: torch.Tensor, objectness_threshold: float = 0.5) -> dict:
    """A :class:`~frepa_monai.networks.heads.DetectionHead` output for one image, in the coordinates of the
    image's file: voxel indices of the loaded array and world (scanner, mm) coordinates.

    ``image`` is the network input ``(C, *spatial)`` as a MetaTensor: after the preprocessing (resize, pad,
    crop...) its ``affine`` maps the network grid to the world, and its ``original_affine`` /
    ``spatial_shape`` meta data describe the file as loaded (files without an affine, PNG / JPEG, load with the
    identity affine, so their world coordinates are voxel coordinates). The box is mapped exactly, without
    resampling: a box edge at ``e`` (edge coordinates: voxel ``i`` spans ``[i, i + 1)``, as ``pred`` is
    normalised by the grid size) is the point ``e - 0.5`` in the affines' voxel-centre coordinates, so its
    position in the file's grid is ``inv(original_affine) @ affine @ (e - 0.5) + 0.5``. For axis-aligned
    preprocessing (resize, pad, crop: what the bundles apply) this is the inverse of the preprocessing; for
    anything else the bounding box of the mapped corners is taken.

    Args:
        pred: ``(2 * n + 1,)``: normalised corner box ``[lo_1 .. lo_n, hi_1 .. hi_n]`` on the network input grid
            and objectness logit.
        image: the network input of that prediction, ``(C, *spatial)`` with ``n`` spatial dims.
        objectness_threshold: ``detected`` is ``sigmoid(logit) >= objectness_threshold``.

    Returns:
        a JSON-ready dict: ``image`` (file name), ``objectness`` (probability), ``detected``, ``box_voxel``
        (integers ``[lo_1 .. lo_n, hi_1 .. hi_n]`` in the file's array index order, minimum inclusive, maximum
        exclusive, clipped to the image, at least one voxel wide: the continuous box rounded to the nearest
        voxel edges), ``box_voxel_continuous`` (unrounded), ``box_world`` (``[min_x, min_y, min_z, max_x, max_y,
        max_z]`` of the physical extent of ``box_voxel``, voxel faces included, in ``space``; None when the file
        has no affine), ``space`` (``RAS`` or ``LPS``, MONAI's reader convention; None without affine),
        ``spatial_shape``, ``affine`` (the file's, identity without affine),
        ``box_normalised`` (``pred``'s box on the network input grid).
    """
    n = image.ndim - 1
    pred = torch.as_tensor(pred).detach().float().cpu().flatten()
    if pred.numel() != 2 * n + 1:
        raise ValueError(
            f"expected a detection output of {2 * n + 1} numbers for a {n}D image, got shape {tuple(pred.shape)}."
        )
    meta = dict(getattr(image, "meta", {}) or {})
    affine = np.asarray(torch.as_tensor(getattr(image, "affine", torch.eye(n + 1))).cpu(), dtype=np.float64)
    dims = affine.shape[0] - 1
    original = meta.get("original_affine")
    original = np.eye(dims + 1) if original is None else np.asarray(torch.as_tensor(original), dtype=np.float64)
    shape = np.array([int(s) for s in meta.get("spatial_shape", image.shape[1:])][:n])
    grid = np.array(image.shape[1:], dtype=np.float64)
    box = pred[: 2 * n].double().numpy().reshape(2, n) * grid  # edge coordinates on the network grid

    to_file = np.linalg.inv(original) @ affine
    corners = _homogeneous(_box_corners(box[0], box[1]) - 0.5, dims) @ to_file.T
    mapped = corners[:, :n] + 0.5
    lo, hi = mapped.min(0), mapped.max(0)
    lo_v = np.clip(np.floor(lo + 0.5), 0, shape - 1).astype(int)
    hi_v = np.clip(np.floor(hi + 0.5), lo_v + 1, shape).astype(int)

    world = _homogeneous(_box_corners(lo_v - 0.5, hi_v - 0.5), dims) @ original.T
    box_world = [round(float(v), 4) for v in (*world[:, :dims].min(0), *world[:, :dims].max(0))]
    has_affine = meta.get("original_affine") is not None
    objectness = float(torch.sigmoid(pred[-1]))
    space = meta.get("space") if has_affine else None
    return {
        "image": str(meta.get("filename_or_obj", "")),
        "objectness": objectness,
        "detected": objectness >= objectness_threshold,
        "box_voxel": [int(v) for v in (*lo_v, *hi_v)],
        "box_voxel_continuous": [round(float(v), 4) for v in (*lo, *hi)],
        "box_world": box_world if has_affine else None,
        "space": None if space is None else str(space),
        "spatial_shape": [int(s) for s in shape],
        "affine": original.tolist(),
        "box_normalised": [float(v) for v in pred[: 2 * n]],
    }


class DetectionBoxToOriginald(MapTransform):
    """Postprocessing of the detection bundles' inference: each detection output under ``keys`` becomes its
    :func:`original_grid_box` dict (under ``box_keys``) and a box mask on the grid of the input file (under
    ``mask_keys``): a ``(1, *spatial_shape)`` uint8 MetaTensor, 1 inside ``box_voxel`` when ``detected`` (all 0
    otherwise), whose meta data are the file's (affine, space, file name), so that ``SaveImaged`` writes a mask
    that overlays the input in a viewer.

    Args:
        keys: detection outputs ``(2 * spatial_dims + 1,)`` (one item, as ``SupervisedEvaluator`` post-processes).
        image_key: the network input of the item (a MetaTensor carrying the preprocessing's geometry).
        box_keys: where to write the dicts; default ``"<key>_box"``.
        mask_keys: where to write the masks; default ``"<key>_box_mask"``.
        objectness_threshold: see :func:`original_grid_box`.
    """

    def __init__(
        self,
        keys,
        image_key: str = "image",
        box_keys=None,
        mask_keys=None,
        objectness_threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.box_keys = [f"{k}_box" for k in self.keys] if box_keys is None else list(ensure_tuple(box_keys))
        self.mask_keys = [f"{k}_box_mask" for k in self.keys] if mask_keys is None else list(ensure_tuple(mask_keys))
        if not len(self.box_keys) == len(self.mask_keys) == len(self.keys):
            raise ValueError("box_keys and mask_keys must name one output per key.")
        self.objectness_threshold = objectness_threshold

    def __call__(self, data):
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"DetectionBoxToOriginald needs the network input under '{self.image_key}'.")
        image = d[self.image_key]
        for key, box_key, mask_key in self.key_iterator(d, self.box_keys, self.mask_keys):
            box = original_grid_box(d[key], image, self.objectness_threshold)
            mask = torch.zeros((1, *box["spatial_shape"]), dtype=torch.uint8)
            if box["detected"]:
                n = len(box["spatial_shape"])
                mask[(0, *(slice(a, b) for a, b in zip(box["box_voxel"][:n], box["box_voxel"][n:])))] = 1
            affine = torch.as_tensor(np.asarray(box["affine"]), dtype=torch.float64)
            meta = {
                "filename_or_obj": box["image"],
                "original_affine": affine.clone(),
                "spatial_shape": np.asarray(box["spatial_shape"]),
                "original_channel_dim": "no_channel",
            }
            if box["space"] is not None:
                meta["space"] = box["space"]
            d[box_key], d[mask_key] = box, MetaTensor(mask, affine=affine, meta=meta)
        return d


class SaveBoxJSONd(MapTransform):
    """Write each :func:`original_grid_box` dict under ``keys`` as JSON to
    ``<output_dir>/<input name>_<output_postfix>.json`` (named after the dict's ``image``, as ``SaveImaged`` names
    its files with ``separate_folder=False``).

    Args:
        keys: box dicts.
        output_dir: folder of the JSON files, created if missing.
        output_postfix: appended to the input's file name.
    """

    def __init__(
        self, keys, output_dir: str = "./", output_postfix: str = "box", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            box = d[key]
            name = box.get("image") or f"item_{id(box)}"
            self.output_dir.mkdir(parents=True, exist_ok=True)
            stem = create_file_basename(self.output_postfix, name, self.output_dir, separate_folder=False)
            path = Path(f"{stem}.json")
            lines = [f"  {json.dumps(str(k))}: {json.dumps(v)}" for k, v in box.items()]  # one line per field
            path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
            logger.info(f"saved {path}")
        return d
