"""One pretraining step of each strategy, built the same way for every step benchmark in ``tools/``.

A step is what :class:`~frepa_monai.engines.PretrainTrainer` does per iteration: the strategy's corruption and
forward pass, its loss, backward and an AdamW step. Besides Frepa and the MAE / MFM baselines there is
``plain``: one full-image reconstruction with RMSE only, on the same encoder and batch. Frepa reconstructs two
full views, so two plain steps are its floor, and ``frepa / (2 x plain)`` is Frepa's own overhead.

Used by ``benchmark_pretrain.py``, ``benchmark_scaling.py`` and ``gpu_check.py``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch

from frepa_monai.losses import MaskedRMSELoss
from frepa_monai.networks import build_autoencoder
from frepa_monai.profiling import PhaseTimer, phase
from frepa_monai.strategies import FrepaStrategy, MAEStrategy, MFMStrategy, PretrainStrategy, StrategyOutput

__all__ = ["STRATEGIES", "PlainStrategy", "StepCase", "build_case", "run_step", "time_steps", "phase_breakdown"]

STRATEGIES = ("frepa", "mae", "mfm", "plain")


class PlainStrategy(PretrainStrategy):
    """The reference step: reconstruct the raw image from itself, RMSE only (no corruption, no Hessian channel)."""

    name = "plain"

    def __init__(self, spatial_dims: int) -> None:
        super().__init__(spatial_dims, use_hessian=False)
        self.loss = MaskedRMSELoss()

    def __call__(self, network, images, epoch, hessian=None) -> StrategyOutput:
        with phase("forward"):
            recon = network(images)
        with phase("loss_rmse"):
            loss = self.loss(recon, images)
        return StrategyOutput(loss=loss, corrupted=images, recon=recon, terms={"loss": loss.detach()})


def _strategy(name: str, dims: int, seed: int) -> PretrainStrategy:
    strategies = {"frepa": FrepaStrategy, "mae": MAEStrategy, "mfm": MFMStrategy, "plain": PlainStrategy}
    if name not in strategies:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}.")
    return strategies[name](dims).set_random_state(seed)


@dataclass
class StepCase:
    """Everything one timed step needs; build it with :func:`build_case`."""

    name: str
    strategy: PretrainStrategy
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    hessian: torch.Tensor | None
    amp: bool
    scaler: torch.amp.GradScaler | None
    device: torch.device


def build_case(
    strategy: str,
    encoder: str,
    dims: int,
    size: int,
    batch: int,
    device: str | torch.device = "cpu",
    amp: bool = False,
    compile: bool = False,
    channels_last: bool = False,
    optimizer: str = "default",
    hessian: str = "pipeline",
    seed: int = 0,
) -> StepCase:
    """A step of ``strategy`` on ``encoder`` for a random batch ``(batch, 3 or 1, *[size] * dims)`` in [0, 1].

    Args:
        amp: autocast to bfloat16 on CUDA (ignored elsewhere, as the bundles do); a GradScaler is not needed
            for bfloat16.
        compile: ``torch.compile`` the autoencoder.
        channels_last: channels-last memory format for the network and the batch (convolutional encoders).
        optimizer: AdamW implementation: ``"default"`` (PyTorch's choice), ``"foreach"`` or ``"fused"``.
        hessian: Frepa's Hessian channel ``"pipeline"`` (computed once, as a data loader would) or ``"step"``
            (computed in every step by the strategy).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    channels = 3 if dims == 2 else 1
    images = torch.rand(batch, channels, *[size] * dims, device=device)
    memory_format = (torch.channels_last if dims == 2 else torch.channels_last_3d) if channels_last else None
    if memory_format is not None:
        images = images.contiguous(memory_format=memory_format)
    step = _strategy(strategy, dims, seed)
    with_hessian = strategy == "frepa"
    network = build_autoencoder(
        encoder, dims, channels + int(with_hessian), size, out_channels=channels, mask_token=strategy == "mae"
    ).to(device)
    if memory_format is not None:
        network = network.to(memory_format=memory_format)
    kwargs = {"foreach": True} if optimizer == "foreach" else {"fused": True} if optimizer == "fused" else {}
    optim = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.0, **kwargs)
    if compile:
        network = torch.compile(network)
    pipeline_hessian = step.hessian_of(images, None) if with_hessian and hessian == "pipeline" else None
    amp = bool(amp) and device.type == "cuda"
    return StepCase(strategy, step, network, optim, images, pipeline_hessian, amp, None, device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step(case: StepCase, epoch: int = 10) -> torch.Tensor:
    """One full step (epoch 10: Frepa's consistency term is on); returns the detached loss."""
    case.network.train()
    case.optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if case.amp else contextlib.nullcontext()
    with autocast:
        out = case.strategy(case.network, case.images, epoch, case.hessian)
    with phase("backward"):
        out.loss.backward()
    with phase("optimizer"):
        case.optimizer.step()
    return out.loss.detach()


def time_steps(case: StepCase, repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of ``repeats`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run_step(case)
    _synchronize(case.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_step(case)
        _synchronize(case.device)
        times.append(time.perf_counter() - start)
    return times


def phase_breakdown(case: StepCase, repeats: int) -> dict[str, float]:
    """Median milliseconds per phase over ``repeats`` steps (the device is synchronised at every phase's ends)."""
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        with PhaseTimer() as timer:
            run_step(case)
        for name, seconds in timer.seconds.items():
            samples.setdefault(name, []).append(1e3 * seconds)
    return {name: statistics.median(v) for name, v in samples.items()}
