"""The process group of a bundle's ``multi_gpu_train.json`` (one process per device under ``torchrun``): each
process's device, and an end of the group after which the process exits cleanly.

Why :func:`end_process_group` and not ``torch.distributed.destroy_process_group()`` alone (issue 15): destroying
the group only removes it from torch's registry. ``DistributedDataParallel`` still holds it (its reducer and its
logger do), so gloo's worker threads (``pt_gloo_runloop``) live on until the interpreter exits. Such a thread frees
the work of a collective after it has woken the caller, and freeing the tensors of an ``all_gather`` that Python
also holds takes the GIL (``~AsyncAllgatherWork`` -> ``TensorImpl::decref_pyobject``). Rank 1 of the bundles
leaves Python about 3 ms after its last collective (the validation metrics' ``all_gather``; rank 0 writes the
checkpoints in between), so on a loaded machine that thread may ask for the GIL after Python has begun finalising.
Python then ends the thread with ``pthread_exit``, whose unwinding through that ``noexcept`` destructor calls
``std::terminate``: "terminate called without an active exception", SIGABRT, the rank exits with -6 although
the training succeeded.

:func:`end_process_group` waits at a barrier until every rank is done with its collectives, drops DDP's references
to the group and then the last one, whose C++ destructor (bound so that it runs without the GIL) joins gloo's
threads while the interpreter is still whole. No thread of the group is left to meet the interpreter's exit.

A bundle's ``multi_gpu_evaluate.json`` splits the evaluation data over the processes with MONAI's
``DistributedSampler`` (``even_divisible=False``: every item is evaluated once, none is repeated to even out the
ranks) and MONAI's metric handlers gather the per-item values, so the metrics equal a single process's.
:func:`check_items_per_rank` says when there are fewer items than processes, and :class:`ItemSeeder` makes an
evaluation's random draws (a pretraining evaluation's corruptions, random crops) follow each item rather than the
order a process meets them in, so they are the same however the data is split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.utils import MAX_SEED
from torch.nn.parallel import DistributedDataParallel

__all__ = ["local_device", "end_process_group", "check_items_per_rank", "ItemSeeder"]

_GROUP_HOLDERS = ("reducer", "logger", "process_group")
"""The attributes through which a ``DistributedDataParallel`` module keeps its process group alive."""


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` (``torchrun`` sets ``LOCAL_RANK``) when CUDA is available, else
    the CPU. (A config expression cannot read ``os.environ``: MONAI's expressions see ``torch``, ``numpy``,
    ``monai`` and the config's imports, and the bundles import no ``os``.)"""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _backends(group) -> list:
    """The backend objects (``ProcessGroupGloo``, ``ProcessGroupNCCL``) of ``group``: torch binds them so that
    their destructor releases the GIL, which lets a worker thread that still waits for the GIL finish while the
    destructor joins it. Empty where this torch has no such accessor."""
    try:
        return [group._get_backend(torch.device(kind)) for kind in group._device_types]
    except (AttributeError, RuntimeError):
        return []


def end_process_group(modules: Sequence[torch.nn.Module] = (), barrier: bool = True) -> None:
    """Destroy the default process group and stop its threads now, not at interpreter exit.

    Args:
        modules: the ``DistributedDataParallel`` modules of the run (others are ignored); they hold the group and
            cannot train after this call (their ``.module`` can still be used).
        barrier: wait until every rank gets here first (the end of a run that succeeded); ``False`` for a rank
            that ends on its own.

    Does nothing when no process group is initialised (a single-process run).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    group = dist.group.WORLD
    if barrier:
        on_gpu = dist.get_backend(group) == "nccl"
        dist.barrier(device_ids=[torch.cuda.current_device()] if on_gpu else None)
    backends = _backends(group)
    for module in modules:
        if isinstance(module, DistributedDataParallel):
            for name in _GROUP_HOLDERS:
                module.__dict__.pop(name, None)
    dist.destroy_process_group()
    del group
    backends.clear()  # the last references: the group's destructor joins its worker threads, without the GIL


def check_items_per_rank(items: Sized, key: str, world_size: int | None = None) -> None:
    """Raise a ``ValueError`` naming ``key`` when ``items`` (the evaluation data) are fewer than the processes of the
    distributed run (``world_size``; ``None``: the process group's, none in a single-process run): MONAI's
    ``DistributedSampler(even_divisible=False)`` gives every process at least one item and repeats none."""
    if world_size is None and not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size() if world_size is None else world_size
    if len(items) < world:
        raise ValueError(
            f"{key} holds {len(items)} item(s), fewer than the {world} processes of this run: start at most "
            f"{max(len(items), 1)} (torchrun --nproc_per_node)."
        )


class ItemSeeder:
    """Reseed an evaluation's random objects before each batch is loaded, from the batch's place in the dataset.

    The seed of a batch is ``seed`` plus the dataset index of its first item, so an item's random draws (a
    pretraining corruption, a random validation crop) are the same whether one process evaluates the whole set or
    a ``DistributedSampler`` gives the item to another rank, which meets it after other items than a single process
    would. With the draws made in the order of evaluation instead (one seed at the start), a 2-process evaluation
    corrupts other images than a 1-process one, and their metrics differ.

    Reseeded: ``randomizables``, and the engine's own ``strategy`` and ``randomizables`` where it has them
    (:class:`~frepa_monai.engines.PretrainEvaluator` keeps a copy of the training strategy).

    Args:
        seed: the base seed; ``None``: the engine's ``seed`` (a ``PretrainEvaluator``'s).
        randomizables: more random objects to reseed (e.g. the validation transforms).

    The data loader must load in this process (``num_workers=0``, as the bundles' validation loaders do): a
    worker process holds its own copy of the transforms.
    """

    def __init__(self, seed: int | None = None, randomizables: Sequence = ()) -> None:
        self.seed = seed
        self.randomizables = [r for r in randomizables if r is not None]
        self._batches = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self)

    def _start(self, engine: Engine) -> None:
        loader = engine.state.dataloader
        if getattr(loader, "num_workers", 0):
            raise ValueError(
                f"ItemSeeder needs a data loader that loads in this process (num_workers=0), not num_workers="
                f"{loader.num_workers}: a worker holds its own copy of the random transforms."
            )
        batches = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
        if batches is None:
            raise ValueError("ItemSeeder needs a torch DataLoader (with a sampler) as the engine's data.")
        self._batches = iter(batches)

    def __call__(self, engine: Engine) -> None:
        seed = self.seed if self.seed is not None else getattr(engine, "seed", None)
        if seed is None:
            raise ValueError("ItemSeeder needs a seed: give one, or attach it to an engine with a 'seed'.")
        batch = next(self._batches)
        first = batch[0] if isinstance(batch, Sequence) else batch
        item_seed = (int(seed) + int(first)) % MAX_SEED
        targets = [getattr(engine, "strategy", None), *getattr(engine, "randomizables", ()), *self.randomizables]
        for r in targets:
            if r is not None:
                r.set_random_state(seed=item_seed)
