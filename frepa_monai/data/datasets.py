"""MONAI's ``CacheDataset``, with a cache fill that waits for its worker threads before it returns or raises."""

from __future__ import annotations

from multiprocessing.pool import ThreadPool

import monai.data
from monai.utils import optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["CacheDataset"]


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
