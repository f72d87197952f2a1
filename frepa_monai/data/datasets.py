"""The bundles' datasets: MONAI's ``CacheDataset`` (in memory), with a cache fill that waits for its worker threads
before it returns or raises, and MONAI's ``PersistentDataset`` (files), with atomic cache writes and unreadable
cache files rebuilt; :func:`pretrain_dataset` picks one by the config key ``cache``."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from copy import deepcopy
from multiprocessing.pool import ThreadPool

import monai.data
import torch
from monai.data.utils import SUPPORTED_PICKLE_MOD, pickle_hashing
from monai.utils import convert_to_tensor, look_up_option, optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
_UMASK = os.umask(0o022)
os.umask(_UMASK)

__all__ = ["CacheDataset", "PersistentDataset", "pretrain_dataset", "source_aware_hash", "DATASET_KINDS"]


class CacheDataset(monai.data.CacheDataset):
    """MONAI's ``CacheDataset`` (same arguments) whose cache filling joins its worker threads.

    MONAI fills the cache in a ``ThreadPool`` left through ``with``, whose exit terminates the pool without joining
    its threads. When the transform of one item raises, a worker still transforming a later item runs on while
    Python prints the error and finalises, and torch aborts the process when that thread takes the GIL during
    finalisation (SIGABRT, exit status 134, after the right error). Here the pool is joined: queued items are
    dropped, the ones being transformed finish, and the error ends the process with exit status 1.
    """

    def _fill_cache(self, indices=None) -> list:
        if self.cache_num <= 0:
            return []
        if indices is None:
            indices = list(range(self.cache_num))
        pool = ThreadPool(self.num_workers)
        try:
            items = pool.imap(self._load_cache_item, indices)
            if self.progress and has_tqdm:
                items = tqdm(items, total=len(indices), desc="Loading dataset")
            return list(items)
        finally:
            pool.terminate()  # drops the items no worker has started
            pool.join()  # waits for those being transformed


def source_aware_hash(item) -> bytes:
    """The cache key of a datalist item: MONAI's ``pickle_hashing`` of the item plus the size and modification time
    of every file it names, so that an image rewritten in place gets a new cache file instead of a stale one."""
    stamps = {}
    if isinstance(item, Mapping):
        for key, value in item.items():
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                stat = os.stat(value)
                stamps[str(key)] = (stat.st_size, stat.st_mtime_ns)
    return pickle_hashing({"item": item, "files": stamps} if stamps else item)


class PersistentDataset(monai.data.PersistentDataset):
    """MONAI's ``PersistentDataset``: the deterministic prefix of ``transform`` (up to the first random transform)
    is computed once per item and kept as a file in ``cache_dir``, so memory does not grow with the data set.

    Differences from MONAI's class, all about the cache files:

    - the cache key includes the cached transforms (``hash_transform`` defaults to ``pickle_hashing``: another
      ``patch_size`` or window writes new files rather than reading stale ones) and each source file's size and
      modification time (:func:`source_aware_hash`);
    - a file is written to a temporary name in ``cache_dir`` itself and renamed (``os.replace``, atomic on one
      file system), so several ranks or DataLoader workers writing the same item never expose a partial file
      (MONAI writes in the system's temporary folder and moves across file systems, which copies);
    - a cache file that cannot be read (truncated, empty, corrupt) is removed and rebuilt with a warning naming
      it, where MONAI re-raises for every corruption but a bad magic number; an unreadable one for lack of
      permission raises ``PermissionError`` naming it.
    """

    def __init__(self, data, transform, cache_dir, hash_func=source_aware_hash, hash_transform=pickle_hashing, **kw):
        super().__init__(data, transform, cache_dir=cache_dir, hash_func=hash_func, hash_transform=hash_transform, **kw)

    def _cachecheck(self, item_transformed):
        if self.cache_dir is None:
            return super()._cachecheck(item_transformed)
        hashfile = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
        if hashfile.is_file():
            try:
                return torch.load(hashfile, weights_only=self.weights_only)
            except FileNotFoundError:  # another process replaced it meanwhile: build it anew
                pass
            except PermissionError as e:
                raise PermissionError(f"{hashfile}: the cache file cannot be read ({e}); fix its permissions") from e
            except Exception as e:  # truncated, empty or corrupt
                warnings.warn(f"{hashfile}: unreadable cache file ({type(e).__name__}: {e}); rebuilding it")
                hashfile.unlink(missing_ok=True)
        item = self._pre_transform(deepcopy(item_transformed))  # keep the original item as hashed
        fd, temp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{hashfile.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(
                    convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta),
                    f,
                    pickle_module=look_up_option(self.pickle_module, SUPPORTED_PICKLE_MOD),
                    pickle_protocol=self.pickle_protocol,
                )
            os.chmod(temp, 0o666 & ~_UMASK)  # mkstemp makes it private; a cache file is as any other file
            os.replace(temp, hashfile)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return item


DATASET_KINDS = ("memory", "persistent")


def pretrain_dataset(
    kind: str,
    data,
    transform,
    cache_rate: float = 1.0,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = 0,
    **kwargs,
) -> monai.data.Dataset:
    """The dataset a bundle trains or validates on, by the config key ``cache``:

    - ``"memory"``: :class:`CacheDataset`, ``cache_rate`` of the items held in memory (memory grows with the data);
    - ``"persistent"``: :class:`PersistentDataset` in ``cache_dir`` (files; memory does not grow with the data).
      ``cache_rate`` 1.0 caches every item, 0.0 none (MONAI's plain ``Dataset``); the files hold the same items
      the memory cache would.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"cache: must be one of {DATASET_KINDS}, got {kind!r}")
    if not 0.0 <= float(cache_rate) <= 1.0:
        raise ValueError(f"cache_rate: must be in [0, 1], got {cache_rate!r}")
    if kind == "memory":
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers, **kwargs)
    if cache_rate == 0.0:
        return monai.data.Dataset(data, transform)
    if cache_rate != 1.0:
        raise ValueError(f"cache_rate: the persistent cache takes 1.0 (every item) or 0.0 (none), got {cache_rate!r}")
    if not cache_dir:
        raise ValueError("cache_dir: the persistent cache needs a folder, got none")
    return PersistentDataset(data, transform, cache_dir=cache_dir)
