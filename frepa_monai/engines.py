"""The pretraining engines on top of MONAI's ignite engines.

- :class:`PretrainTrainer`: a ``SupervisedTrainer`` whose iteration runs a pretraining strategy
  (:mod:`frepa_monai.strategies`: Frepa, or the MAE / MFM baselines) on the batch's device and back-propagates its
  loss; the loss and every term land in the iteration output for the stats, TensorBoard and MLflow handlers.
- :class:`PretrainEvaluator`: a ``SupervisedEvaluator`` that corrupts each validation batch with a fixed seed (the
  same corruption at every validation) and reconstructs it; ``pred`` is the reconstruction, ``label`` the raw
  image, so MONAI metric handlers (RMSE, :class:`~frepa_monai.metrics.BandR2Metric`) apply unchanged.

Their handlers are in :mod:`frepa_monai.handlers`. Both engines run AMP only where CUDA is (``amp=True`` is
ignored on a CPU), so one config serves both.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events
from monai.engines import IterationEvents, SupervisedEvaluator, SupervisedTrainer
from monai.transforms import Randomizable

from frepa_monai.strategies import PretrainStrategy

__all__ = ["TERM_PREFIX", "PretrainTrainer", "PretrainEvaluator"]

TERM_PREFIX = "loss_"
"""Prefix of the loss terms in the trainer's output (flat keys survive MONAI's decollation)."""


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
            ``optimizer``, ``train_handlers``, ``amp`` (CUDA only), ...); ``loss_function`` is the strategy. The
            strategy calls the network itself (MAE passes the visible tokens), so an ``inferer`` is kept only
            because MONAI's train workflow requires the ``train#inferer`` property.

    The iteration's output holds ``image``, ``corrupted`` and ``pred`` (first view and its reconstruction),
    ``loss`` and each term as ``loss_<name>`` (see :func:`loss_terms`); MONAI decollates it into a list of
    per-image dicts, so handlers with the default ``from_engine(["loss"], first=True)`` (``--tracking mlflow``)
    work unchanged.
    """

    def __init__(
        self, strategy: PretrainStrategy, image_key: str = "image", hessian_key: str = "hessian", **kwargs
    ) -> None:
        kwargs["amp"] = bool(kwargs.get("amp", False)) and torch.cuda.is_available()
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
        kwargs["amp"] = bool(kwargs.get("amp", False)) and torch.cuda.is_available()
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
