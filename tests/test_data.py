"""The shipped sample data set and the datalists of the default tasks."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import frepa_monai.data as fd

PATH_KEYS = ("image", "label", "seg", "mask", "label_2nd_observer")
RATIOS = (0.7, 0.1, 0.2)


def _datalists():
    """(name, datalist, spatial dims) of every default task."""
    return [
        ("pretrain_2d", fd.pretrain_2d_datalist(), 2),
        ("pretrain_3d", fd.pretrain_3d_datalist(), 3),
        ("vessel", fd.vessel_segmentation_datalist(), 2),
        ("lung_det_2d", fd.lung_tumour_detection_datalist(spatial_dims=2), 2),
        ("lung_det_3d", fd.lung_tumour_detection_datalist(spatial_dims=3), 3),
        ("tumour_det_2d", fd.tumour_detection_datalist(spatial_dims=2), 2),
        ("tumour_det_3d", fd.tumour_detection_datalist(spatial_dims=3, modalities=("CT", "MR")), 3),
        ("cls_2d", fd.tumour_classification_datalist(spatial_dims=2), 2),
        ("cls_3d", fd.tumour_classification_datalist(spatial_dims=3), 3),
        ("brain_region", fd.brain_region_segmentation_datalist(), 3),
    ]


DATALISTS = _datalists()
IDS = [d[0] for d in DATALISTS]


def _items(dl):
    return [it for split in fd.SPLITS for it in dl[split]]


def _subjects(items):
    return {it["subject"] for it in items}


@lru_cache(maxsize=None)
def _load(path: str, channel_first: bool = True):
    from monai.transforms import LoadImage

    img = LoadImage(image_only=True, ensure_channel_first=channel_first)(path)
    return np.asarray(img), img.affine.numpy() if hasattr(img, "affine") else None


# ----------------------------------------------------------------------------------------------
# the sample folder
# ----------------------------------------------------------------------------------------------
def test_sample_dir_is_inside_the_package():
    assert fd.SAMPLE_DIR == Path(fd.__file__).parent / "sample"
    assert (fd.SAMPLE_DIR / "index.json").is_file()
    assert "shared" not in Path(fd.__file__).read_text()


def test_size_budget():
    total = sum(p.stat().st_size for p in fd.SAMPLE_DIR.rglob("*") if p.is_file())
    assert total < 35 * 2**20, f"sample set is {total / 2**20:.1f} MiB"


def test_checksums_cover_every_file():
    sums = {}
    for line in (fd.SAMPLE_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.strip()] = digest
    files = {p.relative_to(fd.SAMPLE_DIR).as_posix() for p in fd.SAMPLE_DIR.rglob("*") if p.is_file()}
    assert files - {"SHA256SUMS"} == set(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((fd.SAMPLE_DIR / name).read_bytes()).hexdigest() == digest, name


def test_chase_files_match_their_own_checksums():
    root = fd.SAMPLE_DIR / "chase_db1"
    lines = (root / "SHA256SUMS").read_text().split("\n")
    checked = 0
    for line in filter(None, lines):
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((root / name.strip()).read_bytes()).hexdigest() == digest, name
        checked += 1
    assert checked == 28 * 4  # images, 1st observer, 2nd observer, fov masks
    assert "CC BY 4.0" in (root / "README.md").read_text() or "Attribution 4.0" in (root / "README.md").read_text()


def test_every_source_has_a_licence():
    idx = fd.load_index()
    sources = {
        it["source"]
        for key in ("volumes_3d", "slices_2d", "axial_2d", "crops_3d", "images_2d", "chase")
        for it in idx[key]
    }
    assert sources == set(fd.SOURCE_LICENSES)
    readme = (Path(fd.__file__).parent / "README.md").read_text()
    for source, files in fd.SOURCE_LICENSES.items():
        for f in files:
            text = (fd.LICENSES_DIR / f).read_text()
            assert len(text) > 300, f
            assert f in readme, f"README does not point to {f}"
    bsd = "Redistribution and use in source and binary forms"
    assert bsd in (fd.LICENSES_DIR / "pyradiomics-BSD-3-Clause.txt").read_text()
    assert "Permission is hereby granted, free of charge" in (fd.LICENSES_DIR / "pydicom-data-MIT.txt").read_text()
    assert "Attribution 4.0 International" in (fd.LICENSES_DIR / "CC-BY-4.0.txt").read_text()
    assert "CC0 1.0 Universal" in (fd.LICENSES_DIR / "CC0-1.0.txt").read_text()


# ----------------------------------------------------------------------------------------------
# files: they exist, load with MONAI, have the documented dimensionality, values and labels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dl,dims", DATALISTS, ids=IDS)
def test_items_are_uniform_absolute_and_load(name, dl, dims):
    items = _items(dl)
    assert items
    keys = set(items[0])
    assert {"image", "subject", "modality", "window", "source"} <= keys
    for it in items:
        assert set(it) == keys, "every item of one datalist has the same keys (MONAI collation)"
        assert it["modality"] in {"CT", "MR", "XR", "US", "fundus"}
        assert it["window"] == ("none" if it["modality"] != "CT" else it["window"])
        if it["modality"] == "CT":
            assert it["window"] in {"lung", "abdomen", "brain", "bone"}
        for k in PATH_KEYS:
            if k in it and isinstance(it[k], str):
                p = Path(it[k])
                assert p.is_absolute() and p.is_file(), p
                arr, _ = _load(it[k])
                assert np.isfinite(arr).all(), p
                assert arr.ndim == dims + 1, (p, arr.shape)  # channel first
                assert min(arr.shape[1:]) >= 16, (p, arr.shape)
                if k == "image":
                    assert arr.shape[0] in ((1, 3) if dims == 2 else (1,)), (p, arr.shape)
                    assert arr.std() > 0, p
                else:
                    assert arr.shape[0] == 1 and np.array_equal(arr, np.round(arr)), p


@pytest.mark.parametrize("name,dl,dims", DATALISTS, ids=IDS)
def test_label_classes(name, dl, dims):
    allowed = {"vessel": {0, 1}, "brain_region": set(fd.AAL_GROUP_NAMES)}.get(name, {0, 1})
    for it in _items(dl):
        for k in ("label", "seg", "label_2nd_observer"):
            if isinstance(it.get(k), str):
                values = set(np.unique(_load(it[k])[0]).astype(int).tolist())
                assert values <= allowed, (it[k], values)
        if "mask" in it:
            assert set(np.unique(_load(it["mask"])[0]).astype(int).tolist()) == {0, 255}
        if name.startswith("cls"):
            assert it["label"] in (0, 1)
            assert it["label"] == int(_load(it["seg"])[0].any()), it["image"]
    if name == "brain_region":
        colin = [it for it in _items(dl) if it["subject"] == "colin27"][0]
        assert set(np.unique(_load(colin["label"])[0]).astype(int).tolist()) == set(fd.AAL_GROUP_NAMES)


def test_ct_is_in_hounsfield_units():
    idx = fd.load_index()
    ct = [
        it
        for key in ("volumes_3d", "slices_2d", "axial_2d", "crops_3d", "images_2d")
        for it in idx[key]
        if it["modality"] == "CT"
    ]
    assert len(ct) > 50
    for it in ct:
        arr = _load(str(fd.SAMPLE_DIR / it["image"]))[0]
        assert -1024 <= arr.min() <= -850, (it["image"], arr.min())  # air
        assert 200 < arr.max() < 4000, (it["image"], arr.max())  # bone / contrast, not raw stored values
    for it in idx["volumes_3d"]:
        if it["modality"] == "CT":
            arr = _load(str(fd.SAMPLE_DIR / it["image"]))[0]
            lung = ((arr > -950) & (arr < -500)).mean()
            soft = ((arr > -100) & (arr < 100)).mean()
            assert lung > 0.1 and soft > 0.1, (it["image"], lung, soft)


def test_3d_volumes_are_1p5mm_and_consistent_with_labels():
    import nibabel as nib

    for it in fd.pretrain_3d_datalist()["training"] + fd.brain_region_segmentation_datalist()["training"]:
        _, affine = _load(it["image"])
        assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), 1.5, atol=1e-3), it["image"]
    for it in _items(fd.brain_region_segmentation_datalist()) + _items(fd.lung_tumour_detection_datalist(3)):
        a, b = nib.load(it["image"]), nib.load(it["label"])
        assert a.shape == b.shape and np.allclose(a.affine, b.affine), it["image"]
    for it in _items(fd.tumour_classification_datalist(3)):
        assert nib.load(it["image"]).shape == (fd.load_index()["crop_size_3d"],) * 3


def test_vessel_fraction_inside_fov():
    for it in _items(fd.vessel_segmentation_datalist()):
        vessels = _load(it["label"])[0] > 0
        fov = _load(it["mask"])[0] > 0
        assert vessels.shape == fov.shape == (1,) + _load(it["image"])[0].shape[1:]
        frac = vessels[fov].mean()
        assert 0.05 < frac < 0.15, (it["image"], frac)
        assert vessels[~fov].mean() < 0.01


@pytest.mark.parametrize("dims", [2, 3])
def test_detection_boxes_are_the_mask_extent(dims):
    from scipy import ndimage as ndi

    items = _items(fd.lung_tumour_detection_datalist(spatial_dims=dims))
    assert sum(bool(it["box"]) for it in items) >= 2
    for it in items:
        mask = _load(it["label"], False)[0] > 0  # no channel: array index order of the file
        boxes = np.asarray(it["box"], dtype=int).reshape(-1, 2 * dims)
        assert len(boxes) == len(it["box_label"]) and all(c == 0 for c in it["box_label"])
        lab, n = ndi.label(mask, structure=np.ones((3,) * dims))
        assert len(boxes) == n, it["image"]
        covered = np.zeros_like(mask)
        for b in boxes:
            sl = tuple(slice(lo, hi) for lo, hi in zip(b[:dims], b[dims:]))
            covered[sl] = True
            inside = np.argwhere(mask[sl])
            assert len(inside), it["image"]
            assert (inside.min(0) == 0).all() and (inside.max(0) + 1 == b[dims:] - b[:dims]).all(), (it["image"], b)
        assert not (mask & ~covered).any(), "every foreground voxel is inside a box"
        if n:
            idx = np.argwhere(mask)
            assert (boxes[:, :dims].min(0) == idx.min(0)).all() and (boxes[:, dims:].max(0) == idx.max(0) + 1).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_tumour_detection_items_are_the_classification_items_with_their_masks(dims):
    """Detection reuses the classification slices / crops; ``label`` is the tumour mask, foreground iff tumour."""
    det = _items(fd.tumour_detection_datalist(spatial_dims=dims, modalities=("CT", "MR")))
    cls = {it["image"]: it for it in _items(fd.tumour_classification_datalist(spatial_dims=dims))}
    assert sorted(it["image"] for it in det) == sorted(cls)
    for it in det:
        assert it["label"] == cls[it["image"]]["seg"]
        assert bool((_load(it["label"])[0] > 0).any()) == bool(cls[it["image"]]["label"]), it["image"]
    lung = _items(fd.tumour_detection_datalist(spatial_dims=dims))
    assert {it["modality"] for it in lung} == {"CT"} and len(_subjects(lung)) == 2
    with pytest.raises(ValueError, match="no tumour detection items"):
        fd.tumour_detection_datalist(spatial_dims=dims, modalities=("US",))


# ----------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dl,dims", DATALISTS, ids=IDS)
def test_splits_are_disjoint_by_subject(name, dl, dims):
    subj = [_subjects(dl[s]) for s in fd.SPLITS]
    assert not (subj[0] & subj[1]) and not (subj[0] & subj[2]) and not (subj[1] & subj[2])
    n = len(set().union(*subj))
    if n >= 3:
        assert all(dl[s] for s in fd.SPLITS), {s: len(dl[s]) for s in fd.SPLITS}
    else:  # documented: 2 subjects -> 1 training, 1 test
        assert len(subj[0]) == 1 and len(subj[2]) == n - 1 and not subj[1]


def test_split_sizes_and_ratios():
    dl = fd.vessel_segmentation_datalist()
    assert [len(_subjects(dl[s])) for s in fd.SPLITS] == [10, 1, 3]
    assert [len(dl[s]) for s in fd.SPLITS] == [20, 2, 6]
    dl = fd.pretrain_2d_datalist()
    counts = np.array([len(_subjects(dl[s])) for s in fd.SPLITS], dtype=float)
    assert np.allclose(counts / counts.sum(), RATIOS, atol=0.08), counts
    assert [len(_subjects(fd.pretrain_3d_datalist()[s])) for s in fd.SPLITS] == [5, 1, 1]
    assert [len(_subjects(fd.tumour_classification_datalist(2)[s])) for s in fd.SPLITS] == [3, 1, 1]


def test_chase_children_keep_both_eyes_together():
    for seed in range(5):
        dl = fd.vessel_segmentation_datalist(seed=seed)
        where = {}
        for split in fd.SPLITS:
            for it in dl[split]:
                child = Path(it["image"]).stem[6:8]
                assert it["subject"] == f"chase_{child}"
                where.setdefault(child, set()).add(split)
        assert len(where) == 14 and all(len(s) == 1 for s in where.values())
        # the 2D pretraining datalist puts every child in the same split as the vessel task
        pre = fd.pretrain_2d_datalist(seed=seed)
        for split in fd.SPLITS:
            assert {it["subject"] for it in pre[split] if it["source"] == "CHASE_DB1"} == _subjects(dl[split])


@pytest.mark.parametrize("name", IDS)
def test_splits_are_seeded(name):
    fn = {
        "pretrain_2d": fd.pretrain_2d_datalist,
        "pretrain_3d": fd.pretrain_3d_datalist,
        "vessel": fd.vessel_segmentation_datalist,
        "lung_det_2d": lambda seed: fd.lung_tumour_detection_datalist(2, seed=seed),
        "lung_det_3d": lambda seed: fd.lung_tumour_detection_datalist(3, seed=seed),
        "tumour_det_2d": lambda seed: fd.tumour_detection_datalist(2, seed=seed),
        "tumour_det_3d": lambda seed: fd.tumour_detection_datalist(3, seed=seed, modalities=("CT", "MR")),
        "cls_2d": lambda seed: fd.tumour_classification_datalist(2, seed=seed),
        "cls_3d": lambda seed: fd.tumour_classification_datalist(3, seed=seed),
        "brain_region": fd.brain_region_segmentation_datalist,
    }[name]
    assert fn(seed=0) == fn(seed=0)
    assert fn(seed=3) == fn(seed=3)
    assert any(fn(seed=s) != fn(seed=0) for s in range(1, 6)), "another seed gives another split"


@pytest.mark.parametrize("dims", [2, 3])
def test_kfold_test_parts_partition_the_subjects(dims):
    all_subjects = _subjects(_items(fd.tumour_classification_datalist(dims)))
    seen = []
    for k in range(5):
        dl = fd.tumour_classification_datalist(dims, fold=k, num_folds=5)
        subj = [_subjects(dl[s]) for s in fd.SPLITS]
        assert all(subj), k
        assert set().union(*subj) == all_subjects
        assert not (subj[0] & subj[1]) and not ((subj[0] | subj[1]) & subj[2])
        seen.append(subj[2])
    assert sum(len(s) for s in seen) == len(all_subjects) and set().union(*seen) == all_subjects
    assert fd.tumour_classification_datalist(dims, fold=2) == fd.tumour_classification_datalist(dims, fold=2)


def test_kfold_detection_needs_as_many_subjects_as_folds():
    tests = [_subjects(fd.lung_tumour_detection_datalist(2, fold=k, num_folds=2)["test"]) for k in range(2)]
    assert tests[0] | tests[1] == {"pyradiomics_lung1", "pyradiomics_lung2"} and not tests[0] & tests[1]
    with pytest.raises(ValueError):
        fd.lung_tumour_detection_datalist(2, fold=0, num_folds=5)


@pytest.mark.parametrize(
    "n,expected",
    [
        (1, [1, 0, 0]),
        (2, [1, 0, 1]),
        (3, [1, 1, 1]),
        (5, [3, 1, 1]),
        (7, [5, 1, 1]),
        (10, [7, 1, 2]),
        (14, [10, 1, 3]),
        (29, [20, 3, 6]),
    ],
)
def test_split_by_subject_counts(n, expected):
    items = [{"subject": f"s{i:02d}", "k": j} for i in range(n) for j in range(2)]
    out = fd.split_by_subject(items, seed=1)
    assert [len(_subjects(out[s])) for s in fd.SPLITS] == expected
    assert sorted(map(repr, _items(out))) == sorted(map(repr, items))
    for split in fd.SPLITS:  # input order kept inside a split
        assert out[split] == [it for it in items if it in out[split]]


def test_split_by_subject_groups():
    items = [{"subject": f"a{i}", "g": "a"} for i in range(10)] + [{"subject": f"b{i}", "g": "b"} for i in range(3)]
    out = fd.split_by_subject(items, seed=0, group_key="g")
    for g in "ab":
        assert all(any(it["g"] == g for it in out[s]) for s in fd.SPLITS)
    alone = fd.split_by_subject(items[:10], seed=0)
    assert all([it for it in out[s] if it["g"] == "a"] == alone[s] for s in fd.SPLITS)


def test_datalist_json_roundtrip(tmp_path):
    from monai.data import load_decathlon_datalist

    dl = fd.vessel_segmentation_datalist()
    path = fd.datalist_to_json(dl, tmp_path / "vessel.json")
    assert json.loads(path.read_text()) == dl
    for split in fd.SPLITS:
        assert load_decathlon_datalist(str(path), True, split) == dl[split]
