"""The ignite handlers of the Frepa bundles, beside MONAI's own (checkpoint, stats, TensorBoard, MLflow):

- :class:`PreviewSaver`: a PNG of raw | corrupted | reconstructed per validation, captioned with band R^2;
- :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver``, writing atomically;
- :class:`FrepaCheckpointLoader`: resume from the newest intact checkpoint, if any, with clear errors;
- :class:`BestModelRecord`: the best score survives a resume;
- :class:`EpochSeeder`: per-epoch seeds, so that a resumed run repeats an uninterrupted one;
- :func:`loss_terms`: the ``output_transform`` that logs every loss term of a pretraining step;
- :class:`NonFiniteLossCheck`: a NaN or infinite loss term stops training with an error;
- :class:`LossTermAverages`: each loss term's epoch mean in ``engine.state.metrics`` (what MLflow logs per epoch);
- :class:`GradientClipping`: optional gradient-norm clipping before the optimizer step;
- :class:`BestEncoderSaver`: ``encoder.pt`` written with each better ``model.pt``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable
from monai.utils import set_determinism

from frepa_monai.engines import TERM_PREFIX
from frepa_monai.metrics import FREQUENCY_BANDS, band_r2
from frepa_monai.networks.checkpoint import (
    CheckpointError,
    checkpoint_error,
    checkpoint_problem,
    load_checkpoint,
    save_encoder_checkpoint,
)

__all__ = [
    "class_channels",
    "first_sample",
    "loss_terms",
    "NonFiniteLossCheck",
    "PreviewSaver",
    "epoch_checkpoints",
    "latest_checkpoint",
    "FrepaCheckpointLoader",
    "AtomicCheckpointSaver",
    "BestModelRecord",
    "EpochSeeder",
    "LossTermAverages",
    "GradientClipping",
    "BestEncoderSaver",
]

logger = logging.getLogger(__name__)


def class_channels(channel: int, keys: Sequence[str] = ("pred", "label")):
    """``output_transform`` of a per-class metric: the background and class ``channel`` of each decollated one-hot
    ``pred`` and ``label`` (so that ``MeanDice(include_background=False)`` gives that class's Dice)."""
    from monai.handlers import from_engine

    def transform(output):
        return [[x[[0, channel]] for x in values] for values in from_engine(list(keys))(output)]

    return transform


def first_sample(output: dict | list[dict]) -> dict:
    """The first sample of ``engine.state.output``, decollated (a list of dicts, MONAI's default) or not."""
    if isinstance(output, list):
        return output[0]
    return {k: v[0] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in output.items()}


def loss_terms(output: dict | list[dict]) -> dict[str, float]:
    """``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler``: the loss and every term of the step."""
    sample = first_sample(output)
    terms = {k[len(TERM_PREFIX) :]: float(v) for k, v in sample.items() if k.startswith(TERM_PREFIX)}
    return {"loss": float(sample["loss"]), **terms}


class NonFiniteLossCheck:
    """Stop a training at the first step whose loss, or one of its terms (:func:`loss_terms`), is NaN or infinite,
    with an error naming the terms, the epoch and the step (ignite's ``TerminateOnNan`` ends the run as if it had
    completed, and the finalize step would then save the broken weights). The epoch checkpoints on disk are from
    before the failing epoch, so the run can resume once the cause is fixed.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        terms = loss_terms(engine.state.output)
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(
                f"loss terms {', '.join(f'{k}={v}' for k, v in bad.items())} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}: training stopped (a lower learning_rate, or inputs checked "
                "for extreme values, usually helps); the newest epoch checkpoint is from before this epoch."
            )


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


def epoch_checkpoints(ckpt_dir: str) -> list[str]:
    """The ``checkpoint_epoch=<n>.pt`` files a ``CheckpointSaver`` wrote in ``ckpt_dir``, newest (highest ``n``)
    first."""
    folder = Path(ckpt_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_epoch=*.pt") if (m := _EPOCH_FILE.search(p.name))]
    return [str(p) for _, p in sorted(found, reverse=True)]


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """The newest intact epoch checkpoint in ``ckpt_dir`` (see :func:`epoch_checkpoints`), or ``None``.

    A damaged newer one (truncated, empty: :func:`~frepa_monai.networks.checkpoint_problem`) is passed over with a
    warning that names it; when every one is damaged, a ``CheckpointError`` names the newest.
    """
    candidates = epoch_checkpoints(ckpt_dir)
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"checkpoint {path} {problem}: resuming from an older one; remove it when you like")
    if candidates:
        raise CheckpointError(
            f"checkpoint {candidates[0]} {checkpoint_problem(candidates[0])}, and no older intact checkpoint is in "
            f"{ckpt_dir}: remove the damaged files to train from scratch."
        )
    return None


class FrepaCheckpointLoader:
    """Load a checkpoint at the engine's start with MONAI's ``CheckpointLoader``; say clearly when it does not fit.

    Either ``load_path`` (a file that must exist: evaluation, inference) or ``ckpt_dir``: resume from the newest
    intact ``checkpoint_epoch=<n>.pt`` there (:func:`latest_checkpoint`), training from scratch when there is none.
    :class:`AtomicCheckpointSaver` writes atomically (temporary file, then rename), so after a crash or kill the
    newest file is complete and at most the epoch in progress is lost. A file that is not a checkpoint (truncated,
    random bytes, text, Python objects) raises a ``CheckpointError``, and a checkpoint of another network (another
    encoder preset, size or channel count) a ``ValueError``, each naming the file.

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
            if self._finished(path, engine):
                return
            logger.warning(f"resuming from {path}")
        elif not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist; train the bundle first or pass --ckpt_path.")
        try:
            CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location)(engine)
        except Exception as e:
            if isinstance(e, RuntimeError) and "state_dict" in str(e):
                raise ValueError(
                    f"checkpoint {path} was saved from another network architecture than the one configured "
                    "(encoder preset, image size or channels differ, or --strategy_name: only MAE's autoencoder "
                    f"holds a mask token): {str(e).splitlines()[0]}"
                ) from e
            error = checkpoint_error(path, e)
            if error is None:
                raise
            raise error from None  # torch's message advises weights_only=False: not for a file that is not ours

    def _finished(self, path: str, engine: Engine) -> bool:
        """Whether ``path`` ends a finished run (its epoch reached this run's ``max_epochs``). Such a run is not
        resumed, which would train zero epochs (MONAI Label's second ``/train`` on new labels, or the same command
        run again): its epoch checkpoints are removed, and this run trains from epoch 0 from the weights the
        network has now (random, pretrained encoder, or a ``model.pt`` that a ``CheckpointLoader`` in
        ``train#handlers`` loaded). ``model.pt`` stays until this run validates. A larger ``max_epochs`` resumes."""
        trainer = load_checkpoint(path).get("trainer")
        if not isinstance(trainer, dict) or not trainer.get("epoch_length"):
            return False
        epoch = trainer.get("epoch") or trainer.get("iteration", 0) // trainer["epoch_length"]
        if engine.state.max_epochs is None or epoch < engine.state.max_epochs:
            return False
        logger.warning(
            f"{path} is a finished run ({epoch} epochs, max_epochs {engine.state.max_epochs}): training a new run "
            "from epoch 0 instead of resuming it (pass a larger --max_epochs to continue that run)"
        )
        if idist.get_rank() == 0:
            for old in epoch_checkpoints(self.ckpt_dir):
                Path(old).unlink(missing_ok=True)
        return True


class LossTermAverages:
    """Put the epoch mean of every loss term of a pretraining step (:func:`loss_terms`; not the total, logged per
    iteration as ``train_loss``) into ``engine.state.metrics`` as ``train_<term>``, where MONAI's stats,
    TensorBoard and MLflow handlers log the metrics of each epoch. Attach it before them."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _add(self, engine: Engine) -> None:
        for name, value in loss_terms(engine.state.output).items():
            if name != "loss":  # the total: MLflow's train_loss, logged per iteration
                self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._count += 1

    def __call__(self, engine: Engine) -> None:
        for name, total in self._sums.items():
            engine.state.metrics[f"train_{name}"] = total / max(self._count, 1)


class GradientClipping:
    """Clip the gradient norm of every trained parameter to ``max_norm`` between the backward pass and the optimizer
    step (MONAI's ``IterationEvents.BACKWARD_COMPLETED``), unscaling AMP gradients first.

    Args:
        max_norm: the largest total L2 norm of the gradients (``torch.nn.utils.clip_grad_norm_``); ``None`` or 0
            switches clipping off.
    """

    def __init__(self, max_norm: float | None) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class BestEncoderSaver:
    """Write ``encoder.pt`` each time the key-metric saver writes a better ``model.pt``, so both hold the best
    epoch; the encoder file records that epoch and the score (``"best": {"epoch", "metric", "score"}``).

    Attach it to the evaluator after ``saver``.

    Args:
        saver: the evaluator's ``CheckpointSaver`` with ``save_key_metric=True``.
        network: the network holding the encoder (``.encoder``; a DDP wrapper's ``.module`` is unwrapped).
        path: the encoder file.
    """

    def __init__(self, saver, network: torch.nn.Module, path: str) -> None:
        self.saver, self.network, self.path = saver, network, path
        self._best = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        saved = self.saver._key_metric_checkpoint.state_dict()["_saved"]  # ignite: [(score, filename)], best last
        if not saved or saved[-1][0] == self._best or idist.get_rank() != 0:
            return
        self._best = saved[-1][0]
        network = getattr(self.network, "module", self.network)
        best = {"epoch": engine.state.epoch, "metric": engine.state.key_metric_name, "score": float(self._best)}
        save_encoder_checkpoint(self.path, network, best=best)
        logger.info(f"{self.path}: encoder of epoch {best['epoch']} ({best['metric']} {best['score']:.4f})")


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` in atomic mode (temporary file in the same folder, then ``os.replace``; group and
    others keep read permission), with MONAI's fixed-filename option. With ``keep``, each save of an epoch
    checkpoint leaves at most the ``keep`` newest ``checkpoint_epoch=<n>.pt`` in the folder, those of an earlier
    (resumed) run included: ignite counts only the files of its own process."""

    def __init__(self, dirname: str, filename: str | None = None, keep: int | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename, self.keep = filename, keep

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)
        if self.keep and _EPOCH_FILE.search(self.filename or filename) and idist.get_rank() == 0:
            for old in epoch_checkpoints(self.dirname)[self.keep :]:
                Path(old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        name = self.filename or filename
        if (Path(self.dirname) / name).exists():  # already pruned by a later save
            super().remove(name)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written atomically, so a crash or kill never leaves a truncated
    checkpoint (MONAI's own saver writes in place: a kill during a save corrupts the newest file). As ignite's
    ``DiskSaver``, it writes on rank 0 only in distributed runs. After a resume, ``n_saved`` still bounds the epoch
    checkpoints in ``save_dir``.

    Takes the arguments of ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                keep = kwargs.get("n_saved") if checkpoint is self._interval_checkpoint else None
                filename = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename, keep)


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
