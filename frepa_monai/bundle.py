"""Helpers the bundle configs call, so that the configs stay plain values: the preset, where the bundle and the
pretrained encoder are, which handlers run on which rank, the ``--input_dir`` datalist of inference, inference
outputs written per run (:func:`staging_dir`, :func:`publish_outputs`), and the geometry of feature-map outputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.utils import str2bool

from frepa_monai.data.checks import INPUT_SUFFIXES, InputCheck

__all__ = [
    "INPUT_SUFFIXES",
    "recorded_preset",
    "use_gpu_preset",
    "preset_settings",
    "announce_preset",
    "find_bundle_root",
    "pretrained_encoder_path",
    "is_not_rank0",
    "handler_disabled",
    "image_meta",
    "input_datalist",
    "staging_dir",
    "publish_outputs",
    "to_feature_grid",
]

logger = logging.getLogger(__name__)


def recorded_preset(checkpoints: Sequence[str | None] = ()) -> tuple[str, str] | None:
    """``(preset, file)``: the bundle preset recorded in the first of ``checkpoints`` that exists and records one
    (``None`` entries and missing files are skipped), or ``None``. See :mod:`frepa_monai.networks.build_record`."""
    from frepa_monai.networks.build_record import read_build_config

    for path in checkpoints:
        if path and os.path.isfile(path):
            preset = (read_build_config(path) or {}).get("preset")
            if preset in ("gpu", "cpu"):
                return preset, str(path)
    return None


def use_gpu_preset(preset: str, checkpoints: Sequence[str | None] = ()) -> bool:
    """Whether a bundle runs its paper (GPU) preset: ``preset`` ``"gpu"``, or ``"auto"`` resolved from the weights.

    ``"auto"`` takes the preset recorded in the first existing file of ``checkpoints`` (the weights the run starts
    from: ``model.pt`` for evaluation and inference, the newest epoch checkpoint or the pretrained encoder for
    training), so that weights are always run with the network they were trained with; only a run that starts
    from nothing chooses by the hardware (CUDA available). ``"cpu"`` is the CPU preset; anything else raises.
    """
    if preset not in ("auto", "gpu", "cpu"):
        raise ValueError(f"preset must be 'auto', 'gpu' or 'cpu', got {preset!r}.")
    if preset == "auto":
        recorded = recorded_preset(checkpoints)
        if recorded is not None:
            return recorded[0] == "gpu"
    return preset == "gpu" or (preset == "auto" and torch.cuda.is_available())


def preset_settings(preset: str, gpu: dict, cpu: dict, checkpoints: Sequence[str | None] = ()) -> dict:
    """The settings a bundle runs with, ``gpu`` (the paper's) or ``cpu`` by :func:`use_gpu_preset`, plus
    ``"preset"`` (``"gpu"`` / ``"cpu"``), announced in the log (loudly on CPU, from rank 0 only)."""
    gpu_preset = use_gpu_preset(preset, checkpoints)
    chosen = dict(gpu if gpu_preset else cpu)
    if not is_not_rank0():
        recorded = recorded_preset(checkpoints) if preset == "auto" else None
        if recorded is not None:
            logger.warning(f"preset '{recorded[0]}', recorded in {recorded[1]} (the weights this run starts from)")
        announce_preset(gpu_preset, preset, chosen)
    return {**chosen, "preset": "gpu" if gpu_preset else "cpu"}


def announce_preset(gpu_preset: bool, preset: str, settings: dict) -> bool:
    """Log which preset a bundle runs with, loudly on CPU; returns ``gpu_preset``."""
    summary = ", ".join(f"{k}={v}" for k, v in settings.items())
    if gpu_preset:
        logger.warning(f"paper preset (preset='{preset}'): {summary}")
    else:
        logger.warning(
            f"no CUDA device or preset='{preset}': running the CPU preset ({summary}); "
            "pass --preset gpu on a GPU machine for the paper settings"
        )
    return gpu_preset


def find_bundle_root(name: str) -> str:
    """Absolute path of bundle ``name``: the current folder when run from inside the bundle (the model zoo's way,
    ``python -m monai.bundle run --config_file configs/train.json``), else ``bundles/<name>`` below it (this
    repository's layout, as the README's commands run); override with ``--bundle_root``."""
    here = Path.cwd()
    if here.name == name and (here / "configs").is_dir():
        return str(here)
    candidate = here / "bundles" / name
    return str(candidate if (candidate / "configs").is_dir() else here)


def pretrained_encoder_path(pretrain_bundle: str, bundle_root: str) -> str:
    """Default ``encoder_checkpoint`` of a downstream bundle: ``models/encoder.pt`` of the pretraining bundle
    ``pretrain_bundle`` beside ``bundle_root`` (``bundles/<pretrain_bundle>`` in this repository, or a sibling
    folder of a downloaded bundle), else below the current folder's ``bundles/``. The first that exists is
    returned; if none does, the sibling path, so that the error names where the encoder was expected.
    """
    sibling = Path(bundle_root).resolve().parent / pretrain_bundle / "models" / "encoder.pt"
    candidates = [sibling, Path.cwd() / "bundles" / pretrain_bundle / "models" / "encoder.pt"]
    return str(next((p for p in candidates if p.is_file()), sibling))


def is_not_rank0() -> bool:
    """Whether this process is a distributed run's rank other than 0 (whose logging handlers stay off)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0


def handler_disabled(enabled: bool | str = True) -> bool:
    """The ``_disabled_`` of a logging handler: it is switched off (``enabled`` false, or the string ``"false"``)
    or this process is not rank 0."""
    return not str2bool(enabled) or is_not_rank0()


def image_meta(batch: Sequence[dict]) -> list[dict]:
    """The ``batch_transform`` of MONAI's savers: each decollated item's image meta data (its file name)."""
    return [item["image"].meta for item in batch]


def input_datalist(input_dir: str, spatial_dims: int, window: str = "none") -> list[dict]:
    """The inference datalist of ``--input_dir``: ``{"image": path, "window": window}`` for every file directly in
    the folder whose name ends in :data:`INPUT_SUFFIXES` of ``spatial_dims`` (case-insensitive), sorted; folders and
    other files are left out. A folder that does not exist, or holds no such file, raises a ``ValueError`` that
    names it and the accepted endings."""
    folder, suffixes = Path(input_dir), INPUT_SUFFIXES[int(spatial_dims)]
    if not folder.is_dir():
        raise ValueError(f"input_dir '{folder}' is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
    if not files:
        raise ValueError(f"input_dir '{folder}' holds no image file ({', '.join(suffixes)}).")
    return [{"image": str(p), "window": window} for p in files]


def staging_dir(output_dir: str) -> str:
    """The folder an inference run writes into, ``<output_dir>.partial-<pid>``, created empty; folders that earlier
    runs left there (killed, or failed) are removed. :func:`publish_outputs` moves it into place when the run
    completes, so that ``output_dir`` always holds one whole run's results, never an old result beside new ones."""
    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # the run guard's lock: no other run writes here now
    staging = target.parent / f"{target.name}.partial-{os.getpid()}"
    staging.mkdir()
    return str(staging)


def publish_outputs(staging: str, output_dir: str, inputs: InputCheck | None = None) -> str:
    """Replace ``output_dir`` by the finished ``staging`` folder (:func:`staging_dir`), with ``summary.json``: the
    files processed and each that failed :func:`~frepa_monai.data.check_inputs`, with its reason. Returns
    ``output_dir``; raises a ``ValueError`` with the summary (after publishing) when any input failed, so that the
    run exits non-zero."""
    staging_path, target = Path(staging), Path(output_dir)
    if inputs is not None:
        summary = {
            "processed": [item["image"] for item in inputs.items],
            "failed": [{"file": file, "reason": reason} for file, reason in inputs.failures],
        }
        (staging_path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    old = target.parent / f"{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging_path, target)
    shutil.rmtree(old, ignore_errors=True)
    if inputs is not None:
        logger.warning(f"{inputs.summary()}; results in {target}")
        if inputs.failures:
            raise ValueError(f"{inputs.summary()} (the results of the others are in {target})")
    return str(target)


def to_feature_grid(image: torch.Tensor, stride) -> torch.Tensor:
    """Give a feature map the geometry of its grid: voxel ``i`` of an encoder with ``stride`` ``s`` covers input
    voxels ``[s i, s i + s)``, so the affine is scaled by ``s`` and shifted to their centre ``s i + (s - 1) / 2``.

    ``image`` is a MetaTensor ``(C, *grid)`` whose affine is the input's (as inferers return it); other tensors
    are returned unchanged.
    """
    affine = getattr(image, "affine", None)
    if affine is None:
        return image
    nd = image.ndim - 1
    s = torch.as_tensor([float(v) for v in (stride if isinstance(stride, Sequence) else [stride] * nd)][:nd])
    zoom = torch.eye(affine.shape[0], dtype=torch.float64)  # MONAI keeps 4 x 4 affines for 2D images too
    zoom[range(nd), range(nd)] = s.double()
    zoom[:nd, -1] = (s.double() - 1) / 2
    image.affine = affine.double() @ zoom
    return image
