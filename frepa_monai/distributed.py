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
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["local_device", "end_process_group"]

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
