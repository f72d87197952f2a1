"""Data that scales: the persistent cache (MONAI's ``PersistentDataset``) on real sample volumes, its cache files
(written atomically by concurrent processes, rebuilt when unreadable, keyed by the cached transforms and the source
files), the dataset switch's errors, and the generator of ``tools/benchmark_data_scale.py``."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import warnings

import pytest
import torch
from bundle_helpers import REPO
from monai.transforms import Compose, EnsureTyped, LoadImaged, RandSpatialCropd, SpatialPadd

from frepa_monai.data import PersistentDataset, pretrain_3d_datalist, pretrain_dataset
from frepa_monai.transforms import ScaleIntensityByModalityd


def transform(size: int = 24) -> Compose:
    """The 3D pretraining bundle's cached prefix, then a random crop (not cached)."""
    return Compose(
        [
            LoadImaged("image", ensure_channel_first=True, image_only=True),
            ScaleIntensityByModalityd("image", window_key="window"),
            EnsureTyped("image", dtype="float32", track_meta=False),
            SpatialPadd("image", spatial_size=[size] * 3),
            RandSpatialCropd("image", roi_size=[size] * 3, random_size=False),
        ]
    )


def items(n: int = 2) -> list[dict]:
    return sorted(pretrain_3d_datalist()["training"], key=lambda d: os.path.getsize(d["image"]))[:n]


def cached(cache_dir) -> list:
    return sorted(p for p in cache_dir.iterdir() if p.suffix == ".pt")


def same_items(files, expected) -> bool:
    """The cache ``files`` hold exactly the ``expected`` images, in any order (files are named by hash)."""
    loaded = [torch.load(f, weights_only=True)["image"] for f in files]
    return len(loaded) == len(expected) and all(any(torch.equal(a, e) for a in loaded) for e in expected)


def fill(cache_dir, barrier=None) -> None:
    """Build the persistent cache of :func:`items` (in a spawned process: one of two concurrent writers)."""
    dataset = PersistentDataset(items(), transform(), cache_dir=cache_dir)
    if barrier is not None:
        barrier.wait()
    for i in range(len(dataset)):
        dataset._cachecheck(dataset.data[i])


def test_unreadable_cache_files_are_rebuilt_with_a_warning_naming_them(tmp_path):
    dataset = PersistentDataset(items(), transform(), cache_dir=tmp_path)
    expected = [dataset._cachecheck(item)["image"] for item in dataset.data]
    files = cached(tmp_path)
    assert len(files) == 2 and same_items(files, expected)
    whole = files[0].read_bytes()
    for damage in (whole[: len(whole) // 2], b"", b"not a torch file"):  # partly written, empty, corrupt
        for file in files:
            file.write_bytes(damage)
        with pytest.warns(UserWarning, match="unreadable cache file") as caught:
            got = [dataset._cachecheck(item)["image"] for item in dataset.data]
        assert {str(f) for f in files} <= {str(w.message).split(":")[0] for w in caught}  # each file named
        assert all(torch.equal(g, e) for g, e in zip(got, expected))
        assert cached(tmp_path) == files and same_items(files, expected)  # rebuilt on disk


@pytest.mark.slow
def test_two_processes_writing_one_cache_leave_whole_files_only(tmp_path):
    """Two real processes fill the same cache at once (as two ranks of multi_gpu_train.json do): every file loads,
    holds the item, and no temporary file is left."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=fill, args=(tmp_path, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(os.listdir(tmp_path)) == sorted(f.name for f in cached(tmp_path)) and len(cached(tmp_path)) == 2
    reference = PersistentDataset(items(), transform(), cache_dir=None)
    assert same_items(cached(tmp_path), [reference._cachecheck(item)["image"] for item in reference.data])


def test_the_key_follows_the_cached_transforms_and_the_source_files(tmp_path):
    data = items(1)
    fill_one = lambda size: PersistentDataset(data, transform(size), cache_dir=tmp_path)._cachecheck(data[0])  # noqa: E731
    fill_one(24)
    fill_one(24)
    assert len(cached(tmp_path)) == 1  # a hit
    fill_one(200)  # another padding: another file, not the stale one
    assert len(cached(tmp_path)) == 2
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(open(data[0]["image"], "rb").read())
    moved = [{**data[0], "image": str(copy)}]
    PersistentDataset(moved, transform(), cache_dir=tmp_path)._cachecheck(moved[0])
    os.utime(copy, ns=(1, 1))  # the image rewritten in place
    PersistentDataset(moved, transform(), cache_dir=tmp_path)._cachecheck(moved[0])
    assert len(cached(tmp_path)) == 4


def test_the_dataset_switch_names_the_key_it_refuses(tmp_path):
    with pytest.raises(ValueError, match="^cache: must be one of"):
        pretrain_dataset("disk", items(), transform())
    with pytest.raises(ValueError, match="^cache_rate: the persistent cache takes 1.0"):
        pretrain_dataset("persistent", items(), transform(), cache_rate=0.5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="^cache_dir:"):
        pretrain_dataset("persistent", items(), transform(), cache_dir=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert type(pretrain_dataset("persistent", items(), transform(), cache_rate=0.0)).__name__ == "Dataset"


def test_the_scale_benchmark_generates_real_derived_images_and_volumes(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_data_scale", REPO / "tools" / "benchmark_data_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    images = bench.generate(tmp_path / "g", dims=2, count=12, seed=0)
    volumes = bench.generate(tmp_path / "g", dims=3, count=3, seed=0)
    assert len(images) == 12 and len(volumes) == 3 and len({i["image"] for i in images}) == 12
    from monai.transforms import LoadImage

    arrays = [LoadImage(image_only=True, ensure_channel_first=True)(i["image"]) for i in images[:4] + volumes]
    assert all(a.ndim == 3 for a in arrays[:4]) and all(a.ndim == 4 for a in arrays[4:])
    assert all(float(a.float().std()) > 0 for a in arrays)  # real content, not constant
    assert not torch.equal(arrays[0], arrays[1])  # variants differ
    assert bench.generate(tmp_path / "g", dims=2, count=12, seed=0) == images  # deterministic, reused
