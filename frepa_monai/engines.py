"""The pretraining workflow pieces on top of MONAI's ignite engines (spec section 7).

- :class:`PretrainTrainer`: a ``SupervisedTrainer`` whose iteration runs a pretraining strategy
  (:mod:`frepa_monai.strategies`: Frepa, or the MAE / MFM baselines) on the batch's device and
  back-propagates its loss; the loss and every term land in the iteration output for the stats,
  TensorBoard and MLflow handlers.
- :class:`PretrainEvaluator`: a ``SupervisedEvaluator`` that corrupts each validation batch with a fixed seed
  (the same corruption at every validation) and reconstructs it; ``pred`` is the reconstruction, ``label``
  the raw image, so MONAI metric handlers (RMSE, :class:`~frepa_monai.metrics.FrequencyFidelityMetric`)
  apply unchanged.
- Handlers: :class:`PreviewSaver` (PNG of raw / corrupted / reconstructed), :class:`AtomicCheckpointSaver`
  (MONAI's saver, writing atomically), :class:`FrepaCheckpointLoader` (resume from the newest checkpoint, if
  any; clear errors for checkpoints of another network), :class:`BestModelRecord` (the best score survives a
  resume) and :class:`EpochSeeder` (per-epoch seeds, so that a resumed run repeats an uninterrupted one).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.engines import IterationEvents, SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable
from monai.utils import set_determinism

from frepa_monai.metrics import FREQUENCY_BANDS, band_r2
from frepa_monai.strategies import PretrainStrategy

__all__ = [
    "PretrainTrainer",
    "PretrainEvaluator",
    "PreviewSaver",
    "FrepaCheckpointLoader",
    "AtomicCheckpointSaver",
    "EpochSeeder",
    "BestModelRecord",
    "latest_checkpoint",
    "loss_terms",
    "first_sample",
    "announce_preset",
    "find_bundle_root",
    "pretrained_encoder_path",
    "switch",
    "to_feature_grid",
]

logger = logging.getLogger(__name__)


def _batch_tensors(batchdata: dict, device: torch.device, image_key: str, hessian_key: str, non_blocking: bool):
    if not isinstance(batchdata, dict) or image_key not in batchdata:
        raise ValueError(f"pretraining expects dictionary batches with the image under '{image_key}'.")
    images = torch.as_tensor(batchdata[image_key]).to(device, non_blocking=non_blocking)
    hessian = batchdata.get(hessian_key)
    if hessian is not None:
        hessian = torch.as_tensor(hessian).to(device, non_blocking=non_blocking)
    return images, hessian


class PretrainTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` running a :class:`~frepa_monai.strategies.PretrainStrategy` per iteration.

    Args:
        strategy: the pretraining strategy (corruption + objective), e.g. ``FrepaStrategy(spatial_dims=3)``.
        image_key: batch key of the raw images ``(B, C, *spatial)`` in [0, 1].
        hessian_key: batch key of a Hessian channel computed in the data pipeline (optional: without it the
            strategy computes the channel on the batch's device).
        kwargs: ``SupervisedTrainer`` arguments (``device``, ``max_epochs``, ``train_data_loader``, ``network``,
            ``optimizer``, ``train_handlers``, ``amp`` (CUDA only), ...); ``loss_function`` is the strategy.

    The iteration's output holds ``image``, ``corrupted`` and ``pred`` (first view and its reconstruction),
    ``loss`` and each term as ``loss_<name>`` (see :func:`loss_terms`); MONAI decollates it into a list of
    per-image dicts, so handlers with the default ``from_engine(["loss"], first=True)`` (``--tracking mlflow``)
    work unchanged.
    """

    def __init__(
        self, strategy: PretrainStrategy, image_key: str = "image", hessian_key: str = "hessian", **kwargs
    ) -> None:
        super().__init__(loss_function=strategy, **kwargs)
        self.strategy = strategy
        self.image_key = image_key
        self.hessian_key = hessian_key

    def _iteration(self, engine: PretrainTrainer, batchdata: dict) -> dict:
        images, hessian = _batch_tensors(
            batchdata, engine.state.device, self.image_key, self.hessian_key, engine.non_blocking
        )
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        autocast = torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()
        with autocast:
            out = self.strategy(engine.network, images, engine.state.epoch, hessian)
        engine.state.output = {
            "image": images,
            "corrupted": out.corrupted.detach(),
            "pred": out.recon.detach(),
            "loss": out.loss.detach(),
            **{f"{TERM_PREFIX}{k}": v.detach() for k, v in out.terms.items() if k != "loss"},
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(out.loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            out.loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI decollates the output here
        return engine.state.output


class PretrainEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that reconstructs seeded corruptions of the validation images.

    The strategy's random state (and that of ``randomizables``, e.g. the validation transforms when they crop at
    random) is reset to ``seed`` when each evaluation starts, so every validation sees the same corrupted images
    and the metrics of two epochs (or of a resumed and an uninterrupted run) compare.

    Args:
        strategy: the training strategy (a copy is used, so reseeding it leaves the trainer's draws alone).
        seed: corruption seed of every evaluation.
        randomizables: more random objects to reseed with ``seed`` at each evaluation's start.
        image_key, hessian_key: as in :class:`PretrainTrainer`.
        kwargs: ``SupervisedEvaluator`` arguments (``device``, ``val_data_loader``, ``network``,
            ``key_val_metric``, ``additional_metrics``, ``val_handlers``, ``amp``, ...).

    ``engine.state.output`` holds ``image``, ``corrupted``, ``pred`` (reconstruction) and ``label`` (raw image).
    """

    def __init__(
        self,
        strategy: PretrainStrategy,
        seed: int = 12345,
        randomizables: Sequence[Randomizable] = (),
        image_key: str = "image",
        hessian_key: str = "hessian",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.strategy = copy.deepcopy(strategy)  # reseeding it must not disturb the trainer's draws
        self.seed = seed
        self.randomizables = [r for r in randomizables if r is not None]
        self.image_key = image_key
        self.hessian_key = hessian_key
        self.add_event_handler(Events.STARTED, self._reseed)

    def _reseed(self, _: Engine) -> None:
        for r in [self.strategy, *self.randomizables]:
            r.set_random_state(seed=self.seed)

    def _iteration(self, engine: PretrainEvaluator, batchdata: dict) -> dict:
        images, hessian = _batch_tensors(
            batchdata, engine.state.device, self.image_key, self.hessian_key, engine.non_blocking
        )
        engine.network.eval()
        autocast = torch.autocast("cuda", **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            out = self.strategy(engine.network, images, engine.state.epoch, hessian)
        engine.state.output = {
            "image": images,
            "corrupted": out.corrupted,
            "pred": out.recon.float().clamp(0.0, 1.0),
            "label": images,
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def first_sample(output: dict | list[dict]) -> dict:
    """The first sample of ``engine.state.output``, decollated (a list of dicts, MONAI's default) or not."""
    if isinstance(output, list):
        return output[0]
    return {k: v[0] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in output.items()}


TERM_PREFIX = "loss_"
"""Prefix of the loss terms in the trainer's output (flat keys survive MONAI's decollation)."""


def loss_terms(output: dict | list[dict]) -> dict[str, float]:
    """``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler``: the loss and every term of the step."""
    sample = first_sample(output)
    terms = {k[len(TERM_PREFIX) :]: float(v) for k, v in sample.items() if k.startswith(TERM_PREFIX)}
    return {"loss": float(sample["loss"]), **terms}


class PreviewSaver:
    """Save a PNG of raw | corrupted | reconstructed for the first image of the first batch of each run.

    Attach to the evaluator (one preview per validation, named by the trainer's epoch) or to the trainer. 2D
    images show as one row; 3D volumes as three rows, the middle slices across each axis. Images are clipped to
    [0, 1]. A caption gives the band R^2 (:func:`~frepa_monai.metrics.band_r2`) of the shown reconstruction and,
    where the engine computed them (``val_r2_low`` / ``_mid`` / ``_high``), the run's mean over all its images:
    the PNG is written when the run's epoch completes, after its metrics.

    Args:
        output_dir: folder of the PNG files (``preview_epoch_<n>.png``), created if missing.
        image_key, corrupted_key, pred_key: keys of ``engine.state.output``.
        min_height, min_width: small images are enlarged (nearest neighbour, integer factor) to at least this
            height and width.
    """

    def __init__(
        self,
        output_dir: str,
        image_key: str = "image",
        corrupted_key: str = "corrupted",
        pred_key: str = "pred",
        min_height: int = 256,
        min_width: int = 384,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.min_height, self.min_width = min_height, min_width
        self.keys = (image_key, corrupted_key, pred_key)
        self._sample: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.keep_first_sample)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sample = None

    def keep_first_sample(self, engine: Engine) -> None:
        """Keep (a detached CPU copy of) the first sample of the run's first iteration."""
        if self._sample is None:
            sample = first_sample(engine.state.output)
            self._sample = {k: torch.as_tensor(sample[k]).detach().float().cpu() for k in self.keys}

    def __call__(self, engine: Engine) -> None:
        if self._sample is None:
            return
        raw, pred = self._sample[self.keys[0]], self._sample[self.keys[2]]
        panels = np.concatenate([_preview_panels(self._sample[k]) for k in self.keys], axis=1)
        # nearest-neighbour enlargement of small images
        zoom = max(1, -(-self.min_height // panels.shape[0]), -(-self.min_width // panels.shape[1]))
        panels = panels.repeat(zoom, axis=0).repeat(zoom, axis=1)
        own = {band: float(band_r2(pred[None], raw[None], band)[0]) for band in FREQUENCY_BANDS}
        caption = [f"epoch {engine.state.epoch}: raw | corrupted | reconstructed", f"R2 this image: {_r2_text(own)}"]
        means = {band: engine.state.metrics.get(f"val_r2_{band}") for band in FREQUENCY_BANDS}
        if all(v is not None for v in means.values()):
            caption.append(f"R2 validation: {_r2_text(means)}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"preview_epoch_{engine.state.epoch}.png"
        _save_png(panels, path, caption)
        self._sample = None
        logger.info(f"saved preview {path}")


def _r2_text(values: dict) -> str:
    return "  ".join(f"{band} {float(values[band]):.2f}" for band in FREQUENCY_BANDS)


def _preview_panels(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W, 3)`` uint8; ``(C, H, W, D)`` -> the middle slices across each axis, stacked.

    Grey images are repeated to RGB; each slice of a volume is zero-padded to the largest of them.
    """
    image = image.clamp(0, 1)
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, *image.shape[1:])
    if image.ndim == 3:
        slices = [image]
    else:
        slices = [image.select(axis, image.shape[axis] // 2) for axis in (3, 2, 1)]
    height, width = max(s.shape[1] for s in slices), max(s.shape[2] for s in slices)
    padded = [F.pad(s, (0, width - s.shape[2], 0, height - s.shape[1])) for s in slices]
    return (torch.cat(padded, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _save_png(array: np.ndarray, path: Path, caption: Sequence[str] = ()) -> None:
    """Write ``array`` ``(H, W, 3)`` uint8 as a PNG, with the ``caption`` lines in a black strip above it."""
    from PIL import Image, ImageDraw  # MONAI's pillow extra

    line = 12  # PIL's default bitmap font is 11 px high
    canvas = Image.new("RGB", (array.shape[1], array.shape[0] + line * len(caption) + (4 if caption else 0)))
    canvas.paste(Image.fromarray(array), (0, canvas.height - array.shape[0]))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(caption):
        draw.text((4, 2 + line * i), text, fill=(255, 255, 255))
    canvas.save(path)


_EPOCH_FILE = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """The newest ``checkpoint_epoch=<n>.pt`` written by a ``CheckpointSaver`` in ``ckpt_dir``, or ``None``."""
    folder = Path(ckpt_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_epoch=*.pt") if (m := _EPOCH_FILE.search(p.name))]
    return str(max(found)[1]) if found else None


class FrepaCheckpointLoader:
    """Load a checkpoint at the engine's start with MONAI's ``CheckpointLoader``; say clearly when it does not fit.

    Either ``load_path`` (a file that must exist: evaluation, inference) or ``ckpt_dir``: resume from the newest
    ``checkpoint_epoch=<n>.pt`` there, training from scratch when there is none. :class:`AtomicCheckpointSaver`
    writes atomically (temporary file, then rename), so after a crash or kill the newest file is complete and at
    most the epoch in progress is lost. A checkpoint of another network (another encoder preset, size or channel
    count) raises a ``ValueError`` that names the file.

    Args:
        load_dict: objects to restore, e.g. ``{"network": ..., "optimizer": ..., "trainer": ...}``.
        load_path: the checkpoint file.
        ckpt_dir: the ``CheckpointSaver``'s ``save_dir``, searched for the newest epoch checkpoint.
        map_location: passed to ``torch.load``.
    """

    def __init__(
        self, load_dict: dict, load_path: str | None = None, ckpt_dir: str | None = None, map_location=None
    ) -> None:
        if (load_path is None) == (ckpt_dir is None):
            raise ValueError("FrepaCheckpointLoader needs exactly one of load_path and ckpt_dir.")
        self.load_dict = load_dict
        self.load_path = load_path
        self.ckpt_dir = ckpt_dir
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = self.load_path
        if path is None:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                logger.info(f"no checkpoint in {self.ckpt_dir}: training from scratch")
                return
            logger.warning(f"resuming from {path}")
        elif not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist; train the bundle first or pass --ckpt_path.")
        try:
            CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location)(engine)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise ValueError(
                f"checkpoint {path} was saved from another network architecture than the one configured "
                f"(encoder preset, image size or channels differ):\n{e}"
            ) from e


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` in atomic mode (temporary file in the same folder, then ``os.replace``; group and
    others keep read permission), with MONAI's fixed-filename option."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written atomically, so a crash or kill never leaves a truncated
    checkpoint (MONAI's own saver writes in place: a kill during a save corrupts the newest file). As ignite's
    ``DiskSaver``, it writes on rank 0 only in distributed runs.

    Takes the arguments of ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))


class BestModelRecord:
    """The best scores a ``CheckpointSaver`` (``save_key_metric=True``) remembers, as a checkpointable object.

    Put it in the epoch checkpoints' ``save_dict`` / ``load_dict`` so that a resumed run still knows which
    validation score its ``model.pt`` had, and replaces it only with a better model (MONAI's saver keeps that
    record only in memory).
    """

    def __init__(self, saver) -> None:
        self.saver = saver

    def state_dict(self) -> dict:
        return self.saver._key_metric_checkpoint.state_dict()  # the ignite Checkpoint behind the key metric

    def load_state_dict(self, state_dict: dict) -> None:
        self.saver.load_state_dict(state_dict)


class EpochSeeder:
    """Seed everything random from ``(seed, epoch)`` when each epoch starts.

    Sets torch / numpy / python seeds (``monai.utils.set_determinism``: data-loader shuffling, worker seeds) and
    the random state of the given randomizables (the dataset's transforms, the strategy). An epoch's draws
    then depend only on the seed and its number, so a run resumed at epoch ``k`` repeats the uninterrupted one.
    """

    def __init__(self, seed: int, randomizables: Sequence[Randomizable]) -> None:
        self.seed = seed
        self.randomizables = [r for r in randomizables if r is not None]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch_seed = self.seed + 1000 * engine.state.epoch
        set_determinism(seed=epoch_seed)
        for r in self.randomizables:
            r.set_random_state(seed=epoch_seed)


def announce_preset(use_gpu_preset: bool, preset: str, settings: dict) -> bool:
    """Log which preset a bundle runs with, loudly on CPU; returns ``use_gpu_preset`` (for config expressions)."""
    summary = ", ".join(f"{k}={v}" for k, v in settings.items())
    if use_gpu_preset:
        logger.warning(f"paper preset (preset='{preset}', CUDA available): {summary}")
    else:
        logger.warning(
            f"no CUDA device or preset='{preset}': running the CPU preset ({summary}); "
            "pass --preset gpu on a GPU machine for the paper settings"
        )
    return use_gpu_preset


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


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def switch(value) -> bool:
    """A config switch as a bool: ``True``/``False``, ``1``/``0`` or, as the command line gives them, the strings
    ``"true"``/``"false"`` (also yes/no, on/off, any case); anything else raises a ``ValueError``.

    ``python -m monai.bundle run ... --hfl false`` passes the *string* ``"false"``, which Python finds true; the
    bundles read every switch through this function.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a switch (true / false), got {value!r}.")
