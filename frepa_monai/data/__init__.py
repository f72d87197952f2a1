"""The sample data shipped with frepa-monai and the datalists of the default tasks.

``SAMPLE_DIR`` holds a small set of real, openly licensed images (see ``README.md`` beside this
file for provenance, licences and what each task can and cannot show), built by
``tools/build_sample_data.py``. ``sample/index.json`` describes every file; the functions below
turn it into MONAI-style datalists::

    {"training": [...], "validation": [...], "test": [...]}

whose items are dictionaries with ABSOLUTE paths, e.g. ``{"image": "/.../lung1_image.nii.gz",
"label": "/.../lung1_label.nii.gz", "subject": "pyradiomics_lung1", "modality": "CT",
"window": "lung", "source": "pyradiomics-3.0.1"}``. Within one datalist every item has the same
keys (so MONAI's default collation works): ``modality`` is one of ``"CT"``, ``"MR"``, ``"XR"``,
``"US"``, ``"fundus"``; ``window`` names the CT window of paper section 4.1.1 (``"lung"``,
``"abdomen"``, ``"brain"``, ``"bone"``) and is ``"none"`` for every other modality, whose
intensities are raw and meant for percentile normalisation. CT is stored in Hounsfield units.

Splits are made by SUBJECT (both eyes of a CHASE_DB1 child, all slices and crops of one volume
stay together) with :func:`split_by_subject`: seeded, deterministic, 7:1:2 by default, every split
non-empty when there are at least 3 subjects. With 2 subjects the split is 1 training / 0
validation / 1 test, with 1 subject 1 / 0 / 0: this is the case for
:func:`lung_tumour_detection_datalist` (2 CT volumes) and :func:`brain_region_segmentation_datalist`
(2 brains), documented there. ``fold=k`` gives k-fold cross-validation instead: subjects are
dealt into ``num_folds`` folds, fold ``k`` is the test split and the other subjects are split
7:1 into training and validation.

Box convention (detection): ``box`` is a list of boxes, one per connected component of the
tumour mask (full connectivity), in the array index order of the stored file as loaded by MONAI's
``LoadImage`` (NibabelReader) without reorientation: 2D ``[i1, j1, i2, j2]``, 3D
``[i1, j1, k1, i2, j2, k2]``, minimum inclusive, maximum exclusive (a MONAI ``xyxy``/``xyzxyz``
corner box in voxel units). ``box_label`` holds one class index per box (0 = tumour). Slices
without tumour have ``box == []``.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from frepa_monai.data.checks import INPUT_SUFFIXES, InputCheck, check_datalist, check_image, check_inputs
from frepa_monai.data.datasets import CacheDataset, PersistentDataset, pretrain_dataset

__all__ = [
    "SAMPLE_DIR",
    "CacheDataset",
    "PersistentDataset",
    "pretrain_dataset",
    "INPUT_SUFFIXES",
    "InputCheck",
    "check_image",
    "check_datalist",
    "check_inputs",
    "load_index",
    "split_by_subject",
    "pretrain_2d_datalist",
    "pretrain_3d_datalist",
    "pretrain_datalist",
    "refold",
    "vessel_segmentation_datalist",
    "lung_tumour_detection_datalist",
    "tumour_detection_datalist",
    "tumour_classification_datalist",
    "brain_region_segmentation_datalist",
    "datalist_to_json",
    "folder_datalist",
    "AAL_GROUP_NAMES",
    "TISSUE_NAMES",
    "LICENSES_DIR",
    "SOURCE_LICENSES",
]

SAMPLE_DIR = Path(__file__).parent / "sample"
SPLITS = ("training", "validation", "test")
# keys whose string values are paths relative to SAMPLE_DIR
_PATH_KEYS = ("image", "label", "seg", "mask", "label_2nd_observer")
_META_KEYS = ("subject", "modality", "window", "source")
AAL_GROUP_NAMES = {
    0: "background",
    1: "frontal",
    2: "parietal_occipital",
    3: "temporal",
    4: "deep_grey_limbic",
    5: "cerebellum",
}
TISSUE_NAMES = {0: "background_csf", 1: "grey_matter", 2: "white_matter"}
# licence / notice files (in LICENSES/ beside this file) of every value of an item's "source"
LICENSES_DIR = Path(__file__).parent / "LICENSES"
SOURCE_LICENSES = {
    "pyradiomics-3.0.1": ("pyradiomics-BSD-3-Clause.txt",),
    "mricron-data": ("mricron-data-BSD-3-Clause.txt",),
    "nilearn": ("nilearn-BSD-3-Clause.txt", "MNI-ICBM152-2009-notice.txt"),
    "pydicom-data": ("pydicom-data-MIT.txt",),
    "pydicom": ("pydicom-MIT.txt",),
    "scikit-image": ("scikit-image-retina-CC0.txt", "CC0-1.0.txt"),
    "CHASE_DB1": ("CHASE_DB1-NOTICE.txt", "CC-BY-4.0.txt"),
}


@lru_cache(maxsize=1)
def _load_index_cached() -> str:
    return (SAMPLE_DIR / "index.json").read_text()


def load_index() -> dict:
    """The raw description of the sample set (``sample/index.json``), paths relative to SAMPLE_DIR."""
    return json.loads(_load_index_cached())


def _item(raw: dict, keys: Sequence[str]) -> dict:
    """A datalist item with exactly ``keys`` (paths made absolute, ``window`` defaulting to "none")."""
    out: dict[str, Any] = {}
    for k in keys:
        v = raw.get(k, "none" if k == "window" else None)
        if v is None:
            raise KeyError(f"sample index item {raw.get('image')} has no {k!r}")
        if k in _PATH_KEYS and isinstance(v, str):
            v = str(SAMPLE_DIR / v)
        out[k] = copy.deepcopy(v)
    return out


# ----------------------------------------------------------------------------------------------
# splitting
# ----------------------------------------------------------------------------------------------
def _split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Subjects per split: largest remainder of n * ratio, then at least one per split with a
    positive ratio (taken from the fullest split) as long as that leaves the donor non-empty."""
    r = np.asarray(ratios, dtype=float)
    if r.ndim != 1 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"invalid ratios {ratios}")
    r = r / r.sum()
    exact = n * r
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(r)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    for i in sorted(range(len(r)), key=lambda i: (-r[i], i)):  # fill empty splits, largest ratio first
        if r[i] > 0 and counts[i] == 0:
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return [int(c) for c in counts]


def _subjects(items: Sequence[dict], subject_key: str) -> list[str]:
    return sorted({str(it[subject_key]) for it in items})


def _assign(subjects: list[str], ratios, seed: int, fold: int | None, num_folds: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    ordered = [subjects[i] for i in rng.permutation(len(subjects))]
    if fold is None:
        counts = _split_counts(len(ordered), ratios)
        names = [name for name, c in zip(SPLITS, counts) for _ in range(c)]
        return dict(zip(ordered, names))
    if not 2 <= num_folds <= len(ordered):
        raise ValueError(f"num_folds={num_folds} needs 2 <= num_folds <= number of subjects ({len(ordered)})")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold={fold} must be in [0, {num_folds})")
    fold_of = {s: i % num_folds for i, s in enumerate(ordered)}
    # the remaining subjects, starting with the next fold's, are split training:validation
    rest = sorted(
        (s for s in ordered if fold_of[s] != fold),
        key=lambda s: ((fold_of[s] - fold - 1) % num_folds, ordered.index(s)),
    )
    n_train, n_val = _split_counts(len(rest), ratios[:2])
    out = {s: "test" for s in ordered if fold_of[s] == fold}
    out.update({s: "validation" for s in rest[:n_val]})
    out.update({s: "training" for s in rest[n_val:]})
    return out


def split_by_subject(
    items: Sequence[dict],
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    *,
    fold: int | None = None,
    num_folds: int = 5,
    subject_key: str = "subject",
    group_key: str | None = None,
) -> dict[str, list[dict]]:
    """Split ``items`` into ``{"training", "validation", "test"}`` so that no subject is in two splits.

    Subjects (the distinct values of ``item[subject_key]``) are shuffled with
    ``numpy.random.default_rng(seed)`` (from their sorted order, so the result depends only on the
    set of subjects and the seed) and dealt out in the proportions ``ratios`` (largest remainder;
    with at least 3 subjects every split gets at least one; with 2 subjects: 1 training and 1 test).
    Items keep their input order inside each split.

    ``fold=k`` (0 <= k < ``num_folds``) gives the k-th of ``num_folds`` cross-validation splits
    instead: the shuffled subjects are dealt round-robin into folds, fold k is the test split, the
    other subjects are split into training and validation in the proportion ``ratios[0]:ratios[1]``
    (validation taken first from fold k+1). The test splits of the folds partition the subjects.

    ``group_key`` splits each group (distinct ``item[group_key]``) separately, with the same seed,
    and merges the results, so that every source is represented in every split where it can be and
    a group split the same way as in another datalist (e.g. CHASE_DB1 children) lands the same.
    """
    items = list(items)
    groups: dict[Any, list[dict]] = {}
    for it in items:
        groups.setdefault(it.get(group_key) if group_key else None, []).append(it)
    where: dict[tuple, str] = {}
    for g, members in groups.items():
        for s, split in _assign(_subjects(members, subject_key), ratios, seed, fold, num_folds).items():
            where[(g, s)] = split
    out: dict[str, list[dict]] = {k: [] for k in SPLITS}
    for it in items:
        g = it.get(group_key) if group_key else None
        out[where[(g, str(it[subject_key]))]].append(it)
    return out


def _strip(split: dict[str, list[dict]], drop: Sequence[str]) -> dict[str, list[dict]]:
    return {k: [{kk: vv for kk, vv in it.items() if kk not in drop} for it in v] for k, v in split.items()}


# ----------------------------------------------------------------------------------------------
# default tasks
# ----------------------------------------------------------------------------------------------
def pretrain_2d_datalist(seed: int = 0) -> dict[str, list[dict]]:
    """2D pretraining: slices of every 3D volume (3 orientations), the 2D DICOM / fundus images and
    the 28 CHASE_DB1 images (image only). Keys: image, subject, modality, window, source.

    Each of the three groups (volume slices, 2D images, CHASE_DB1) is split by subject separately,
    so CHASE_DB1 children fall in the same split as in :func:`vessel_segmentation_datalist` with
    the same seed (pretraining never sees the vessel test children in its training split).
    """
    idx = load_index()
    keys = ("image",) + _META_KEYS
    items = (
        [dict(_item(r, keys), _group="slices") for r in idx["slices_2d"]]
        + [dict(_item(r, keys), _group="images_2d") for r in idx["images_2d"]]
        + [dict(_item(r, keys), _group="chase") for r in idx["chase"]]
    )
    return _strip(split_by_subject(items, seed=seed, group_key="_group"), ["_group"])


def pretrain_3d_datalist(seed: int = 0) -> dict[str, list[dict]]:
    """3D pretraining: the 7 volumes at 1.5 mm (2 chest CT, 3 tumour MR, Colin27 and MNI152 T1).
    Keys: image, subject, modality, window, source. 7 subjects: 5 / 1 / 1."""
    idx = load_index()
    items = [_item(r, ("image",) + _META_KEYS) for r in idx["volumes_3d"]]
    return split_by_subject(items, seed=seed)


def pretrain_datalist(
    spatial_dims: int, data_dir: str | Path | None = None, window: str = "none", seed: int = 0
) -> dict[str, list[dict]]:
    """The datalist of a pretraining bundle: every image under ``data_dir`` (:func:`folder_datalist`, all read with
    ``window``) when given, else the sample data of ``spatial_dims`` (:func:`pretrain_2d_datalist` /
    :func:`pretrain_3d_datalist`); split with ``seed``."""
    if data_dir:
        return folder_datalist(data_dir, window=window, seed=seed)
    return (pretrain_2d_datalist if int(spatial_dims) == 2 else pretrain_3d_datalist)(seed=seed)


def refold(
    datalist: dict[str, list[dict]], fold: int | None = None, num_folds: int = 5, seed: int = 0
) -> dict[str, list[dict]]:
    """``datalist`` itself without ``fold``; with ``fold=k`` the k-th of ``num_folds`` cross-validation splits of all
    its items, by subject (:func:`split_by_subject`)."""
    if fold is None:
        return datalist
    items = [item for split in datalist.values() for item in split]
    return split_by_subject(items, seed=seed, fold=int(fold), num_folds=num_folds)


def vessel_segmentation_datalist(seed: int = 0) -> dict[str, list[dict]]:
    """CHASE_DB1 vessel segmentation: 28 colour fundus images (JPEG, 999x960) of 14 children.
    Keys: image, label (1st observer, PNG 0/1), label_2nd_observer (PNG 0/1), mask (field of view,
    PNG 0/255), subject (``chase_XX``, both eyes), modality ("fundus"), window, source.
    14 subjects: 10 / 1 / 3 children (20 / 2 / 6 images)."""
    idx = load_index()
    keys = ("image", "label", "label_2nd_observer", "mask") + _META_KEYS
    return split_by_subject([_item(r, keys) for r in idx["chase"]], seed=seed)


def lung_tumour_detection_datalist(
    spatial_dims: int = 2, seed: int = 0, fold: int | None = None, num_folds: int = 5
) -> dict[str, list[dict]]:
    """Lung tumour detection on the two pyradiomics chest CTs (HU, window "lung").

    ``spatial_dims=2``: native axial slices (0.57 / 0.63 mm in-plane, cropped to the lungs), all
    slices with tumour (3 of lung1, 11 of lung2) and evenly spaced slices without (3 and 5), each
    with its 2D mask. ``spatial_dims=3``: the two 1.5 mm volumes with their masks.
    Keys: image, label (mask path), box, box_label, subject, modality, window, source.

    Only 2 subjects exist, so the default split is 1 training / 0 validation / 1 test, and k-fold
    needs ``num_folds=2`` (``fold`` 0 or 1); ``num_folds`` above 2 raises ``ValueError``.
    """
    idx = load_index()
    keys = ("image", "label", "box", "box_label") + _META_KEYS
    if spatial_dims == 2:
        raw = [r for r in idx["axial_2d"] if r["modality"] == "CT"]
    elif spatial_dims == 3:
        raw = [r for r in idx["volumes_3d"] if r["modality"] == "CT" and "box" in r]
    else:
        raise ValueError("spatial_dims must be 2 or 3")
    return split_by_subject([_item(r, keys) for r in raw], seed=seed, fold=fold, num_folds=num_folds)


def tumour_detection_datalist(
    spatial_dims: int = 2,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int = 5,
    modalities: Sequence[str] = ("CT",),
) -> dict[str, list[dict]]:
    """Tumour detection items whose ``label`` is the tumour MASK; the detection bundles derive the box from it
    after their spatial transforms (:class:`frepa_monai.transforms.MaskToBoxd`), so boxes follow every resize.

    ``spatial_dims=2``: the native axial slices of :func:`tumour_classification_datalist` (with and without
    tumour); ``spatial_dims=3``: its 48^3 crops at 1.5 mm (centred on the tumour or free of it). ``modalities``
    picks the cases: ``("CT",)`` (default) the two lung CTs, the paper's lung tumour detection (2D: 22 slices,
    14 with tumour; 3D: 8 crops, 4 with tumour; 2 subjects, so ``num_folds`` at most 2); ``("CT", "MR")`` adds
    the brain and breast MR tumours (5 subjects, 5 folds). Keys: image, label (mask path), subject, modality,
    window, source.
    """
    idx = load_index()
    keys = ("image", "label") + _META_KEYS
    wanted = {m.upper() for m in modalities}
    if spatial_dims == 2:
        raw = [dict(r) for r in idx["axial_2d"]]
    elif spatial_dims == 3:
        raw = [dict(r, label=r["seg"]) for r in idx["crops_3d"]]
    else:
        raise ValueError("spatial_dims must be 2 or 3")
    items = [_item(r, keys) for r in raw if r["modality"].upper() in wanted]
    if not items:
        raise ValueError(f"no tumour detection items of modalities {sorted(wanted)}; the sample set has CT and MR.")
    return split_by_subject(items, seed=seed, fold=fold, num_folds=num_folds)


def tumour_classification_datalist(
    spatial_dims: int = 2, seed: int = 0, fold: int | None = None, num_folds: int = 5
) -> dict[str, list[dict]]:
    """Tumour-present classification (``label`` 1 if the tumour mask touches the image, else 0) on
    the 5 pyradiomics cases (lung1, lung2 CT; brain1, brain2, breast1 MR).

    ``spatial_dims=2``: native axial slices, tumour slices plus evenly spaced slices without
    (44 slices, 27 positive). ``spatial_dims=3``: 48^3 crops at 1.5 mm, 2 centred on the tumour
    and 2 without tumour per case (breast1 is too small for crops without tumour: 2 positive only;
    18 crops, 10 positive). Keys: image, label (int), seg (mask path), subject, modality, window,
    source. 5 subjects: 3 / 1 / 1; ``fold=k`` with ``num_folds=5`` tests one case per fold.
    """
    idx = load_index()
    keys = ("image", "label", "seg") + _META_KEYS
    if spatial_dims == 2:
        items = [_item(dict(r, label=int(r["tumour"]), seg=r["label"]), keys) for r in idx["axial_2d"]]
    elif spatial_dims == 3:
        items = [_item(r, keys) for r in idx["crops_3d"]]
    else:
        raise ValueError("spatial_dims must be 2 or 3")
    return split_by_subject(items, seed=seed, fold=fold, num_folds=num_folds)


def brain_region_segmentation_datalist(seed: int = 0, include_mni152: bool = True) -> dict[str, list[dict]]:
    """3D segmentation of grouped AAL regions (classes in ``AAL_GROUP_NAMES``: 0 background,
    1 frontal, 2 parietal + occipital, 3 temporal, 4 deep grey + limbic, 5 cerebellum) at 1.5 mm.

    Subjects: Colin27 (``colin27``, AAL drawn on this very brain) and, with ``include_mni152``, the
    MNI152 2009a template with AAL transferred through MNI coordinates and kept on its grey matter
    (an approximate label). Keys: image, label, subject, modality, window, source. 2 subjects:
    1 training / 0 validation / 1 test (1 / 0 / 0 without MNI152).
    """
    idx = load_index()
    keys = ("image", "label") + _META_KEYS
    subjects = {"colin27", "mni152_2009a"} if include_mni152 else {"colin27"}
    items = [_item(r, keys) for r in idx["volumes_3d"] if r["subject"] in subjects]
    return split_by_subject(items, seed=seed)


def datalist_to_json(datalist: dict, path: str | Path) -> Path:
    """Write a datalist as JSON (readable by ``monai.data.load_decathlon_datalist``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(datalist, indent=1) + "\n")
    return path


IMAGE_SUFFIXES = INPUT_SUFFIXES[2]  # every file a bundle takes: the 3D endings are among the 2D ones
"""File endings :func:`folder_datalist` takes as images (what MONAI's ``LoadImage`` reads)."""


def folder_datalist(
    folder: str | Path, window: str = "none", seed: int = 0, ratios: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, list[dict]]:
    """A pretraining datalist of every image file under ``folder`` (recursively), split 7:1:2 by file.

    Each file is one subject. Items are ``{"image": path, "subject": relative path, "window": window}``: pass
    ``window="lung"`` (or another CT window) for CT in Hounsfield units, ``"none"`` for percentile normalisation.
    Files ending in :data:`IMAGE_SUFFIXES` count as images; a folder without any raises ``ValueError``. Every
    DICOM file is an item of its own (2D images); for DICOM series of 3D volumes write a datalist whose
    ``image`` is each series folder instead.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist or is not a folder.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}.")
    items = [{"image": str(p.resolve()), "subject": str(p.relative_to(root)), "window": window} for p in files]
    return split_by_subject(items, ratios, seed)
