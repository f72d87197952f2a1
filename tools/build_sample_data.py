#!/usr/bin/env python
"""Build the sample data set shipped in ``frepa_monai/data/sample``.

The sample set is small, real, openly licensed medical imaging data, converted to NIfTI
(``.nii.gz``) or kept as PNG/JPEG, so that every Frepa stage runs on real anatomy. This tool
rebuilds it from its public sources, deterministically: running it twice with the same sources
and the same library versions gives byte-identical files (gzip streams are written with
``mtime=0`` and no file name, the few random choices use a fixed seed). ``sample/SHA256SUMS``
lists every file it writes.

Sources and how to obtain them (no network is used by the build itself; ``--fetch`` runs the
first two commands for you into ``--sources-dir``):

1. pyradiomics 3.0.1 source archive (BSD-3-Clause), folder ``data/``::

       pip download --no-deps --no-binary :all: --no-build-isolation pyradiomics==3.0.1 -d SRC
       tar -xzf SRC/pyradiomics-3.0.1.tar.gz -C SRC        # -> SRC/pyradiomics-3.0.1/data

   (``--no-build-isolation`` needs numpy, setuptools and wheel in the running environment.)
2. Debian package ``mricron-data`` (BSD-3-Clause per its Debian copyright file)::

       cd SRC && apt-get download mricron-data && dpkg-deb -x mricron-data_*.deb mricron
       # -> SRC/mricron/usr/share/mricron/templates/{ch2,aal}.nii.gz, aal.nii.txt

   An installed package (``apt-get install mricron-data``) is found in
   ``/usr/share/mricron/templates`` as well.
3. nilearn (BSD-3-Clause; ``pip install nilearn``): MNI ICBM152 2009a files shipped in
   ``nilearn/datasets/data/`` (found from the installed package).
4. pydicom (MIT) and pydicom-data (MIT; ``pip install pydicom pydicom-data``): test DICOM files
   read offline with ``pydicom.data.get_testdata_file``.
5. scikit-image (``pip install scikit-image``): ``skimage/data/retina.jpg`` (CC0), found from
   the installed package without importing it.
6. CHASE_DB1 retinal vessel data (CC BY 4.0), a folder given by ``--chase-dir`` (default
   ``../shared/data/CHASE_DB1`` next to the repository) holding ``images/``, ``masks/``,
   ``masks_2ndHO/``, ``fov_masks/``, ``README.md`` and ``SHA256SUMS``. Files are copied byte for
   byte and checked against ``SHA256SUMS``.

Build-only dependencies (NOT dependencies of frepa-monai): ``pydicom``, ``pydicom-data``,
``nilearn`` and ``scikit-image`` must be installed (only their files are read; nilearn and
scikit-image are not even imported). Reading, resampling and writing use ``itk`` (NRRD input),
``nibabel``, ``numpy``, ``scipy`` and ``Pillow``, which frepa-monai already depends on.

Processing (details in ``frepa_monai/data/README.md``):

* 3D volumes are reoriented to RAS (axis flips only), resampled to 1.5 mm isotropic with
  ``nibabel.processing.resample_to_output`` (images: linear, labels: nearest neighbour),
  cropped (chest CT: to the lungs plus 15 mm; MR: to the body / head, the largest thresholded
  component plus 6 mm; always containing the whole label) and written as NIfTI with the correct
  affine. CT is int16 Hounsfield units, MR int16 raw intensities, labels uint8.
* Colin27 + AAL (116 labels, and grouped into 5 classes by AAL label name), MNI152 2009a T1 with a
  tissue map (argmax of the grey / white matter probabilities where one is >= 0.5) and the grouped
  AAL transferred through MNI coordinates onto its grey matter.
* 2D pretraining slices: 5 slices per orientation (sagittal, coronal, axial) of every 3D volume,
  at 20/35/50/65/80 % of each axis, as 2D NIfTI keeping the slice's world position.
* Native axial slices (original in-plane resolution, cropped to the body) of the pyradiomics
  volumes: every slice with tumour plus evenly spaced slices without, each with its 2D mask.
* 3D crops (48^3 voxels at 1.5 mm) centred on the tumour (label 1) or placed at seeded random
  positions without tumour (label 0), for tumour-present classification.
* 2D images from DICOM: stored values (MONOCHROME1 inverted to MONOCHROME2, CT rescaled to HU,
  colour ultrasound to luma) block-averaged to at most 1024 px on the long side; the retina photo
  resized to 1024x1024 PNG. pydicom-data's head CT ``693_UNCR.dcm`` is left out on purpose: it
  comes from the CQ500 data set (CC BY-NC-SA 4.0).
* ``sample/index.json`` describes every file (subject, modality, CT window, source, boxes);
  ``frepa_monai.data`` builds the datalists from it.

Usage::

    pip install pydicom pydicom-data nilearn scikit-image      # build-only
    python tools/build_sample_data.py --fetch --sources-dir SRC --chase-dir PATH/CHASE_DB1
    python tools/build_sample_data.py --sources-dir SRC --chase-dir PATH --out frepa_monai/data/sample

The output folder is deleted and rebuilt (``--keep`` keeps it); a non-empty folder without an
``index.json`` is never deleted. The build takes about 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "frepa_monai" / "data" / "sample"
DEFAULT_CHASE = REPO.parent / "shared" / "data" / "CHASE_DB1"

SPACING = 1.5  # mm, isotropic grid of all 3D volumes
SLICE_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8)  # positions of the 2D pretraining slices per axis
AXIS_NAMES = ("sag", "cor", "ax")  # RAS axes 0, 1, 2
CROP_SIZE = 48  # voxels per side of the 3D classification crops (72 mm)
MAX_2D = 1024  # longest side of 2D images after downsampling
SEED = 20241123  # fixed seed of the few random choices (crop positions)

# pyradiomics test cases: name -> (modality, CT window)
PYRADIOMICS_CASES = {
    "lung1": ("CT", "lung"),
    "lung2": ("CT", "lung"),
    "brain1": ("MR", None),
    "brain2": ("MR", None),
    "breast1": ("MR", None),
}

# DICOM test files: file -> (sample name, modality, CT window, description)
DICOM_FILES = {
    "RG1_UNCR.dcm": ("pydicom_rg1_chest", "XR", None, "chest radiograph (CR), NEMA WG04 RG1"),
    "RG3_UNCR.dcm": ("pydicom_rg3_leg", "XR", None, "lower-leg radiograph (CR), NEMA WG04 RG3"),
    "MR2_UNCR.dcm": ("pydicom_mr2_shoulder", "MR", None, "shoulder T1 SE MR, NEMA WG04 MR2"),
    "CT_small.dcm": ("pydicom_ct_small", "CT", "abdomen", "thoracic CT slice (128x128), from NEMA WG04 CT1"),
    "MR_small.dcm": ("pydicom_mr_small", "MR", None, "MR slice (64x64), from NEMA WG04 MR1"),
    "US1_UNCR.dcm": ("pydicom_us1", "US", None, "ultrasound (RGB, converted to luma), NEMA WG04 US1"),
}

# Grouping of the 116 AAL labels into 5 classes, by AAL label name (aal.nii.txt of mricron-data).
AAL_GROUPS = {
    1: (
        "frontal",
        ("Precentral", "Frontal_", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus", "Paracentral_Lobule"),
    ),
    2: (
        "parietal_occipital",
        (
            "Postcentral",
            "Parietal_",
            "SupraMarginal",
            "Angular",
            "Precuneus",
            "Calcarine",
            "Cuneus",
            "Lingual",
            "Occipital_",
        ),
    ),
    3: ("temporal", ("Temporal_", "Heschl", "Fusiform")),
    4: (
        "deep_grey_limbic",
        (
            "Insula",
            "Cingulum_",
            "Hippocampus",
            "ParaHippocampal",
            "Amygdala",
            "Caudate",
            "Putamen",
            "Pallidum",
            "Thalamus",
        ),
    ),
    5: ("cerebellum", ("Cerebelum_", "Vermis_")),
}


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_nifti(arr: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    """Write a (2D or 3D) NIfTI deterministically: gzip with mtime 0 and no embedded file name."""
    import nibabel as nib

    arr = np.asarray(arr)
    if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(arr.dtype, np.integer):
        arr = np.rint(arr)
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    if info is not None:
        assert arr.min() >= info.min and arr.max() <= info.max, (path, arr.min(), arr.max())
    img = nib.Nifti1Image(np.ascontiguousarray(arr.astype(dtype)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def itk_to_nibabel(path: Path):
    """Read an ITK-readable file (NRRD) into a RAS-oriented nibabel image, keeping the geometry."""
    import itk
    import nibabel as nib

    im = itk.imread(str(path))
    arr = np.transpose(itk.array_from_image(im), (2, 1, 0))  # ITK (z, y, x) -> (x, y, z)
    direction = np.asarray(itk.array_from_matrix(im.GetDirection()), dtype=float)
    spacing = np.asarray(im.GetSpacing(), dtype=float)
    origin = np.asarray(im.GetOrigin(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK physical space is LPS, NIfTI is RAS
    return nib.as_closest_canonical(nib.Nifti1Image(arr, affine))


def canonical(img):
    import nibabel as nib

    return nib.as_closest_canonical(img)


def resample_iso(img, order: int):
    """Resample to SPACING mm isotropic (RAS-aligned output grid covering the input)."""
    import nibabel as nib
    from nibabel import processing

    data = np.asanyarray(img.dataobj)
    data = data.astype(np.float32) if order > 0 else data.astype(np.int16)
    out = processing.resample_to_output(nib.Nifti1Image(data, img.affine), SPACING, order=order, mode="nearest")
    return np.asanyarray(out.dataobj), out.affine


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def foreground_mask(arr: np.ndarray, modality: str) -> np.ndarray:
    """Body / head mask: threshold, open, keep the largest component."""
    from scipy import ndimage as ndi

    if modality == "CT":
        mask = arr > -400
    else:
        mask = arr > 0.15 * np.percentile(arr, 99)
    mask = ndi.binary_opening(mask, iterations=2) if min(arr.shape) > 8 else mask
    return largest_component(mask)


def lung_mask(arr: np.ndarray) -> np.ndarray:
    """Air inside the body (HU < -400, holes of the body filled slice by slice): the two lungs."""
    from scipy import ndimage as ndi

    body = foreground_mask(arr, "CT")
    filled = np.stack([ndi.binary_fill_holes(body[..., k]) for k in range(arr.shape[2])], axis=-1)
    lung = ndi.binary_opening((arr < -400) & filled, iterations=2)
    lab, n = ndi.label(lung)
    if n == 0:
        return lung
    sizes = ndi.sum(lung, lab, index=np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    return np.isin(lab, keep)


def bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, s)) for i, s in zip(idx, mask.shape)
    )


def union_slices(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def crop_affine(affine: np.ndarray, starts) -> np.ndarray:
    shift = np.eye(4)
    shift[: len(starts), 3] = starts
    out = affine @ shift
    return out


def slice_2d(arr: np.ndarray, affine: np.ndarray, axis: int, k: int):
    """2D slice k along `axis` with a NIfTI affine that keeps its position in world space."""
    keep = [a for a in range(3) if a != axis]
    out = np.take(arr, k, axis=axis)
    aff = np.eye(4)
    aff[:3, 0] = affine[:3, keep[0]]
    aff[:3, 1] = affine[:3, keep[1]]
    aff[:3, 2] = affine[:3, axis]
    idx = np.zeros(3)
    idx[axis] = k
    aff[:3, 3] = affine[:3, :3] @ idx + affine[:3, 3]
    return out, aff


def boxes_from_mask(mask: np.ndarray) -> list[list[int]]:
    """One box per connected component (full connectivity), [mins..., maxs...], max exclusive."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask > 0, structure=np.ones((3,) * mask.ndim))
    boxes = []
    for sl in ndi.find_objects(lab):
        boxes.append([int(s.start) for s in sl] + [int(s.stop) for s in sl])
    return sorted(boxes)


def evenly_spaced(candidates: list[int], n: int) -> list[int]:
    if n <= 0 or not candidates:
        return []
    if len(candidates) <= n:
        return list(candidates)
    pos = np.linspace(0, len(candidates) - 1, n + 2)[1:-1]
    return sorted({candidates[int(round(p))] for p in pos})


def rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def save_image_and_mask(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, folder: Path, stem: str):
    """Write ``<stem>_image.nii.gz`` (int16) and ``<stem>_label.nii.gz`` (uint8) in ``folder``; return both paths."""
    p_img, p_lab = folder / f"{stem}_image.nii.gz", folder / f"{stem}_label.nii.gz"
    save_nifti(image, affine, p_img, np.int16)
    save_nifti(mask, affine, p_lab, np.uint8)
    return p_img, p_lab


def box_fields(mask: np.ndarray) -> dict:
    """The detection fields of an index item: one box per tumour component, all of class 0."""
    boxes = boxes_from_mask(mask)
    return {"box": boxes, "box_label": [0] * len(boxes)}


# ----------------------------------------------------------------------------------------------
# source discovery and fetching
# ----------------------------------------------------------------------------------------------
def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def fetch_sources(src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    if not (src / "pyradiomics-3.0.1" / "data").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "pyradiomics==3.0.1",
                "-d",
                str(src),
            ],
            check=True,
        )
        subprocess.run(["tar", "-xzf", str(src / "pyradiomics-3.0.1.tar.gz"), "-C", str(src)], check=True)
    if not (src / "mricron" / "usr" / "share" / "mricron" / "templates").is_dir():
        subprocess.run(["apt-get", "download", "mricron-data"], cwd=src, check=True)
        debs = sorted(src.glob("mricron-data_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(src / "mricron")], check=True)


def resolve_sources(args) -> dict[str, Path]:
    src = Path(args.sources_dir) if args.sources_dir else None
    found: dict[str, Path] = {}
    # pyradiomics
    cands = [Path(args.pyradiomics_data)] if args.pyradiomics_data else []
    if src:
        cands.append(src / "pyradiomics-3.0.1" / "data")
    found["pyradiomics"] = next((c for c in cands if (c / "lung1_image.nrrd").is_file()), None)
    # mricron
    cands = [Path(args.mricron_templates)] if args.mricron_templates else []
    if src:
        cands.append(src / "mricron" / "usr" / "share" / "mricron" / "templates")
    cands.append(Path("/usr/share/mricron/templates"))
    found["mricron"] = next((c for c in cands if (c / "ch2.nii.gz").is_file()), None)
    # nilearn
    nl = (
        Path(args.nilearn_data)
        if args.nilearn_data
        else (package_dir("nilearn") or Path("/nonexistent")) / "datasets" / "data"
    )
    found["nilearn"] = nl if (nl / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file() else None
    # scikit-image
    sk = Path(args.skimage_data) if args.skimage_data else (package_dir("skimage") or Path("/nonexistent")) / "data"
    found["skimage"] = sk if (sk / "retina.jpg").is_file() else None
    # CHASE_DB1
    ch = Path(args.chase_dir)
    found["chase"] = ch if (ch / "SHA256SUMS").is_file() else None
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise SystemExit(
            f"sources not found: {missing}; see `--help` for how to obtain them "
            "(or pass --fetch --sources-dir DIR for pyradiomics and mricron-data)"
        )
    return found


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------
def pretrain_slices(name: str, arr: np.ndarray, affine: np.ndarray, out: Path, meta: dict) -> list[dict]:
    items = []
    dtype = np.int16
    for axis, axis_name in enumerate(AXIS_NAMES):
        n = arr.shape[axis]
        ks = sorted({min(int(round(f * (n - 1))), n - 1) for f in SLICE_FRACTIONS})
        for k in ks:
            sl, aff = slice_2d(arr, affine, axis, k)
            path = out / "slices2d" / f"{name}_{axis_name}{k:03d}.nii.gz"
            save_nifti(sl, aff, path, dtype)
            items.append({"image": rel(path, out), **meta, "orientation": axis_name, "slice_index": k})
    return items


def build_pyradiomics(src: Path, out: Path, index: dict) -> None:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(SEED)
    for name, (modality, window) in PYRADIOMICS_CASES.items():
        log(f"pyradiomics {name}")
        img = itk_to_nibabel(src / f"{name}_image.nrrd")
        lab = itk_to_nibabel(src / f"{name}_label.nrrd")
        assert np.allclose(img.affine, lab.affine) and img.shape == lab.shape
        native = np.asanyarray(img.dataobj)
        native_lab = (np.asanyarray(lab.dataobj) > 0).astype(np.uint8)
        meta = {"subject": f"pyradiomics_{name}", "modality": modality, "source": "pyradiomics-3.0.1"}
        if window:
            meta["window"] = window

        # --- 3D: 1.5 mm isotropic, cropped to the body -----------------------------------------
        iso, aff = resample_iso(img, order=1)
        iso_lab, aff_l = resample_iso(lab, order=0)
        assert np.allclose(aff, aff_l) and iso.shape == iso_lab.shape
        iso_lab = (iso_lab > 0).astype(np.uint8)
        if modality == "CT":  # chest CT: crop to the lungs plus 15 mm (mediastinum included)
            region = union_slices(bbox(lung_mask(iso), margin=10), bbox(iso_lab))
        else:
            region = union_slices(bbox(foreground_mask(iso, modality), margin=4), bbox(iso_lab))
        iso, iso_lab = iso[region], iso_lab[region]
        aff = crop_affine(aff, [s.start for s in region])
        if modality == "CT":
            iso = np.clip(iso, -1024, None)
        vol_img, vol_lab = save_image_and_mask(iso, iso_lab, aff, out / "volumes", name)
        vitem = {"image": rel(vol_img, out), "label": rel(vol_lab, out), **meta, **box_fields(iso_lab)}
        index["volumes_3d"].append(vitem)
        index["slices_2d"] += pretrain_slices(name, iso, aff, out, meta)

        # --- 3D crops for tumour-present classification -------------------------------------------
        half = CROP_SIZE // 2
        pad_value = -1024 if modality == "CT" else 0
        centres = []
        tumour = np.argwhere(iso_lab > 0)
        centre = np.rint((tumour.min(0) + tumour.max(0)) / 2).astype(int)
        centres.append(("pos", centre))
        shifted = centre + rng.integers(-8, 9, size=3)
        centres.append(("pos", shifted))
        body = foreground_mask(iso, modality)
        body_pts = np.argwhere(ndi.binary_erosion(body, iterations=3)) if body.sum() > 0 else np.argwhere(body)
        negatives, tries = 0, 0
        while negatives < 2 and tries < 500 and len(body_pts):
            tries += 1
            c = body_pts[rng.integers(len(body_pts))]
            lo = c - half
            sl = tuple(slice(max(int(start), 0), min(int(start) + CROP_SIZE, n)) for start, n in zip(lo, iso.shape))
            # at least half of the crop inside the volume along each axis, and no tumour voxel
            if any(s.stop - s.start < half for s in sl) or iso_lab[sl].any():
                continue
            centres.append(("neg", c))
            negatives += 1
        counts = {"pos": 0, "neg": 0}
        for kind, c in centres:
            lo = np.asarray(c) - half
            crop = np.full((CROP_SIZE,) * 3, pad_value, dtype=np.float32)
            crop_lab = np.zeros((CROP_SIZE,) * 3, dtype=np.uint8)
            src_sl, dst_sl = [], []
            for ax in range(3):
                a0, a1 = max(lo[ax], 0), min(lo[ax] + CROP_SIZE, iso.shape[ax])
                src_sl.append(slice(int(a0), int(a1)))
                dst_sl.append(slice(int(a0 - lo[ax]), int(a1 - lo[ax])))
            crop[tuple(dst_sl)] = iso[tuple(src_sl)]
            crop_lab[tuple(dst_sl)] = iso_lab[tuple(src_sl)]
            present = int(crop_lab.any())
            assert present == (kind == "pos"), (name, kind)
            i = counts[kind]
            counts[kind] += 1
            p_img, p_lab = save_image_and_mask(
                crop, crop_lab, crop_affine(aff, lo), out / "crops3d", f"{name}_{kind}{i}"
            )
            index["crops_3d"].append({"image": rel(p_img, out), "seg": rel(p_lab, out), "label": present, **meta})

        # --- native axial slices, cropped to the body ---------------------------------------------
        nbody = foreground_mask(native.astype(np.float32), modality)
        if modality == "CT":  # lungs plus about 15 mm, as for the 3D volume
            margin = int(round(15 / float(np.linalg.norm(img.affine[:3, 0]))))
            inplane = bbox(lung_mask(native.astype(np.float32)).any(axis=2), margin=margin)
        else:
            inplane = bbox(nbody.any(axis=2), margin=8)
        inplane = union_slices(inplane, bbox(native_lab.any(axis=2))) if native_lab.any() else inplane
        pos = [int(k) for k in np.nonzero(native_lab.any(axis=(0, 1)))[0]]
        area = nbody.sum(axis=(0, 1))
        min_gap = 3 if modality == "CT" else 2
        neg_cands = [
            k for k in range(native.shape[2]) if min(abs(k - p) for p in pos) >= min_gap and area[k] >= 0.3 * area.max()
        ]
        if modality == "CT":  # negatives must show lung: enough voxels in [-950, -500] HU in the body
            lung_px = lung_mask(native.astype(np.float32)).sum(axis=(0, 1))
            neg_cands = [k for k in neg_cands if lung_px[k] >= 0.05 * area[k]]
        n_neg = max(3, len(pos) // 2)
        neg = evenly_spaced(neg_cands, n_neg)
        for k in sorted(pos + neg):
            sl_img, saff = slice_2d(native, img.affine, 2, k)
            sl_lab, _ = slice_2d(native_lab, img.affine, 2, k)
            sl_img, sl_lab = sl_img[inplane], sl_lab[inplane]
            saff = crop_affine(saff, [s.start for s in inplane])
            if modality == "CT":
                sl_img = np.clip(sl_img, -1024, None)
            p_img, p_lab = save_image_and_mask(sl_img, sl_lab, saff, out / "axial2d", f"{name}_z{k:03d}")
            index["axial_2d"].append(
                {
                    "image": rel(p_img, out),
                    "label": rel(p_lab, out),
                    **meta,
                    "slice_index": k,
                    "tumour": int(sl_lab.any()),
                    **box_fields(sl_lab),
                }
            )


def aal_group_lut(names: dict[int, str]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for idx, name in names.items():
        hits = [g for g, (_, prefixes) in AAL_GROUPS.items() if any(name.startswith(p) for p in prefixes)]
        if len(hits) != 1:
            raise ValueError(f"AAL label {idx} {name!r} matches groups {hits}")
        lut[idx] = hits[0]
    return lut


def build_brain(mricron: Path, nilearn: Path, out: Path, index: dict) -> None:
    import nibabel as nib
    from nibabel import processing

    log("mricron ch2 (Colin27) + AAL")
    names = {}
    for line in (mricron / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    assert len(names) == 116, len(names)
    lut = aal_group_lut(names)

    ch2 = canonical(nib.load(mricron / "ch2.nii.gz"))
    aal = canonical(nib.load(mricron / "aal.nii.gz"))
    assert np.allclose(ch2.affine, aal.affine) and ch2.shape == aal.shape
    t1, aff = resample_iso(ch2, order=1)
    aal_iso, aff_l = resample_iso(aal, order=0)
    assert np.allclose(aff, aff_l)
    region = union_slices(bbox(foreground_mask(t1, "MR"), margin=4), bbox(aal_iso > 0))
    t1, aal_iso = t1[region], aal_iso[region].astype(np.uint8)
    aff = crop_affine(aff, [s.start for s in region])
    grouped = lut[aal_iso]
    p_t1 = out / "volumes" / "colin27_t1.nii.gz"
    p_aal = out / "volumes" / "colin27_aal.nii.gz"
    p_grp = out / "volumes" / "colin27_aal_grouped.nii.gz"
    save_nifti(t1, aff, p_t1, np.int16)
    save_nifti(aal_iso, aff, p_aal, np.uint8)
    save_nifti(grouped, aff, p_grp, np.uint8)
    shutil.copyfile(mricron / "aal.nii.txt", out / "volumes" / "colin27_aal_labels.txt")
    meta = {"subject": "colin27", "modality": "MR", "source": "mricron-data"}
    index["volumes_3d"].append({"image": rel(p_t1, out), "label": rel(p_grp, out), "aal": rel(p_aal, out), **meta})
    index["slices_2d"] += pretrain_slices("colin27", t1, aff, out, meta)

    log("nilearn MNI152 2009a")
    t1m = canonical(nib.load(nilearn / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gm = canonical(nib.load(nilearn / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))
    wm = canonical(nib.load(nilearn / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))
    mt1, maff = resample_iso(t1m, order=1)
    pgm, _ = resample_iso(gm, order=1)
    pwm, _ = resample_iso(wm, order=1)
    pgm, pwm = pgm / 255.0, pwm / 255.0  # the nilearn "converted" maps store probabilities as uint8
    tissue = np.where(np.maximum(pgm, pwm) >= 0.5, 1 + (pwm > pgm), 0).astype(np.uint8)
    region = union_slices(bbox(foreground_mask(mt1, "MR"), margin=4), bbox(tissue > 0))
    mt1, tissue = mt1[region], tissue[region]
    maff = crop_affine(maff, [s.start for s in region])
    # AAL transferred to the MNI152 grid through the shared MNI coordinates (nearest neighbour),
    # kept only on MNI152 grey matter (tissue == 1): AAL labels grey matter only.
    aal_mni = processing.resample_from_to(
        nib.Nifti1Image(aal_iso.astype(np.int16), aff), (mt1.shape, maff), order=0, mode="constant", cval=0
    )
    aal_mni = np.asanyarray(aal_mni.dataobj).astype(np.uint8)
    grouped_mni = np.where(tissue == 1, lut[aal_mni], 0).astype(np.uint8)
    p_t1 = out / "volumes" / "mni152_2009a_t1.nii.gz"
    p_tis = out / "volumes" / "mni152_2009a_tissue.nii.gz"
    p_grp = out / "volumes" / "mni152_2009a_aal_grouped.nii.gz"
    save_nifti(mt1, maff, p_t1, np.int16)
    save_nifti(tissue, maff, p_tis, np.uint8)
    save_nifti(grouped_mni, maff, p_grp, np.uint8)
    meta = {"subject": "mni152_2009a", "modality": "MR", "source": "nilearn"}
    index["volumes_3d"].append({"image": rel(p_t1, out), "label": rel(p_grp, out), "tissue": rel(p_tis, out), **meta})
    index["slices_2d"] += pretrain_slices("mni152_2009a", mt1, maff, out, meta)
    index["aal_groups"] = {str(g): name for g, (name, _) in AAL_GROUPS.items()}
    index["aal_groups"]["0"] = "background"
    index["aal_group_of_label"] = {str(i): int(lut[i]) for i in sorted(names)}


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a.astype(np.float64)
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    return a[:h, :w].astype(np.float64).reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def build_dicom(out: Path, index: dict) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    for fname, (name, modality, window, desc) in DICOM_FILES.items():
        log(f"pydicom {fname}")
        ds = pydicom.dcmread(get_testdata_file(fname))
        a = ds.pixel_array
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if a.ndim == 3:  # RGB ultrasound -> ITU-R BT.601 luma
            a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
        a = a.astype(np.float64)
        if photometric == "MONOCHROME1":  # invert so that higher values are brighter
            a = (2 ** int(ds.BitsStored) - 1) - a
        if modality == "CT":
            a = a * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            a = np.clip(a, -1024, None)
        f = int(np.ceil(max(a.shape) / MAX_2D))
        a = block_mean(a, f)
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        sp = [float(s) for s in spacing] if spacing and all(float(s) > 0 for s in spacing) else [1.0, 1.0]
        affine = np.diag([sp[0] * f, sp[1] * f, 1.0, 1.0])
        dtype = np.uint8 if modality == "US" else np.int16
        path = out / "images2d" / f"{name}.nii.gz"
        save_nifti(a, affine, path, dtype)
        item = {
            "image": rel(path, out),
            "subject": name,
            "modality": modality,
            "source": "pydicom-data" if "UNCR" in fname else "pydicom",
            "description": desc,
            "pixel_spacing_mm": [sp[0] * f, sp[1] * f] if spacing and all(float(s) > 0 for s in spacing) else None,
        }
        if window:
            item["window"] = window
        index["images_2d"].append(item)


def build_skimage(skdata: Path, out: Path, index: dict) -> None:
    from PIL import Image

    log("scikit-image retina.jpg")
    im = Image.open(skdata / "retina.jpg").convert("RGB")
    s = MAX_2D
    im = im.resize((s, s), Image.Resampling.LANCZOS)
    path = out / "images2d" / "skimage_retina.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=True)
    index["images_2d"].append(
        {
            "image": rel(path, out),
            "subject": "skimage_retina",
            "modality": "fundus",
            "source": "scikit-image",
            "description": "colour fundus photograph, normal left eye",
        }
    )


def build_chase(chase: Path, out: Path, index: dict) -> None:
    log("CHASE_DB1")
    dst = out / "chase_db1"
    sums = {}
    for line in (chase / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*").removeprefix("./")] = digest
    for name, digest in sorted(sums.items()):
        src = chase / name
        if sha256(src) != digest:
            raise SystemExit(f"CHASE_DB1 checksum mismatch: {src}")
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst / name)
    shutil.copyfile(chase / "README.md", dst / "README.md")
    shutil.copyfile(chase / "SHA256SUMS", dst / "SHA256SUMS")
    for img in sorted((dst / "images").glob("Image_*.jpg")):
        stem = img.stem  # Image_01L
        child, eye = stem[6:8], stem[8]
        item = {
            "image": rel(img, out),
            "label": rel(dst / "masks" / f"{stem}_1stHO.png", out),
            "label_2nd_observer": rel(dst / "masks_2ndHO" / f"{stem}_2ndHO.png", out),
            "mask": rel(dst / "fov_masks" / f"{stem}_mask.png", out),
            "subject": f"chase_{child}",
            "eye": eye,
            "modality": "fundus",
            "source": "CHASE_DB1",
        }
        for k in ("label", "label_2nd_observer", "mask"):
            assert (out / item[k]).is_file(), item[k]
        index["chase"].append(item)


def write_sums(out: Path) -> None:
    files = sorted(p for p in out.rglob("*") if p.is_file() and p != out / "SHA256SUMS")
    lines = [f"{sha256(p)}  {rel(p, out)}" for p in files]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    p.add_argument(
        "--sources-dir", default=None, help="folder holding pyradiomics-3.0.1/ and mricron/ (as made by --fetch)"
    )
    p.add_argument(
        "--fetch",
        action="store_true",
        help="download pyradiomics 3.0.1 (pip download) and mricron-data (apt-get download) into --sources-dir first",
    )
    p.add_argument("--pyradiomics-data", default=None, help="pyradiomics-3.0.1/data folder")
    p.add_argument(
        "--mricron-templates",
        default=None,
        help="mricron templates folder (default: SOURCES/mricron/usr/share/mricron/templates "
        "or /usr/share/mricron/templates)",
    )
    p.add_argument("--nilearn-data", default=None, help="nilearn/datasets/data (default: from the installed nilearn)")
    p.add_argument("--skimage-data", default=None, help="skimage/data (default: from the installed scikit-image)")
    p.add_argument("--chase-dir", default=str(DEFAULT_CHASE), help="CHASE_DB1 folder (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="do not delete the output folder before building")
    args = p.parse_args(argv)

    if args.fetch:
        if not args.sources_dir:
            p.error("--fetch needs --sources-dir")
        fetch_sources(Path(args.sources_dir))
    src = resolve_sources(args)
    out = Path(args.out).resolve()
    if out.exists() and not args.keep:
        if any(out.iterdir()) and not (out / "index.json").is_file():
            raise SystemExit(f"{out} is not empty and holds no index.json: refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    index: dict = {
        "format": 1,
        "spacing_3d_mm": SPACING,
        "crop_size_3d": CROP_SIZE,
        "box_convention": "array index order of the stored file as loaded by nibabel / MONAI "
        "NibabelReader; 2D [i1, j1, i2, j2], 3D [i1, j1, k1, i2, j2, k2]; "
        "min inclusive, max exclusive; one box per connected component",
        "volumes_3d": [],
        "slices_2d": [],
        "axial_2d": [],
        "crops_3d": [],
        "images_2d": [],
        "chase": [],
    }
    build_pyradiomics(src["pyradiomics"], out, index)
    build_brain(src["mricron"], src["nilearn"], out, index)
    build_dicom(out, index)
    build_skimage(src["skimage"], out, index)
    build_chase(src["chase"], out, index)
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    write_sums(out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote {sum(1 for f in out.rglob('*') if f.is_file())} files, {total / 2**20:.1f} MiB to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
