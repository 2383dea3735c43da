"""TotalSegmentator (v1 and v2.0.x) to an nnU-Net raw dataset.

Layout read (the Zenodo downloads, github.com/wasserth/TotalSegmentator): ``meta.csv`` and per case
``<image_id>/ct.nii.gz`` plus ``<image_id>/segmentations/<structure>.nii.gz``, in the folder given or
the one folder below it that has ``meta.csv`` (the zip unpacks to ``Totalsegmentator_dataset_v201/``).
``meta.csv`` is ``;``-separated; v2.0.1's starts with a UTF-8 byte-order mark and has 11 columns
(image_id, age, gender, institute, study_type, split, manufacturer, scanner_model, kvp, pathology,
pathology_location): only ``image_id`` and ``split`` are used.

The structure set is the official list of v1 (104) or v2 (117) (``nnunet_ctorg.labels``), detected
per case from the mask files present (v1-only names such as ``heart_myocardium`` or ``face``, v2-only
names such as ``heart`` or ``skull``). A mask file that neither version has is reported in the case
record and the summary and otherwise ignored. Cases of the ``train`` and ``val`` splits go to
imagesTr with a fixed ``splits_final.json`` (one fold: train / val) in ``nnUNet_preprocessed``;
``test`` cases go to imagesTs. The binary masks of each organ's structures are merged; where masks of
different organs overlap, the organ with the higher unified id wins. A missing mask file is
tolerated and recorded: the organ counts as annotated if at least one of its structure files
exists, and ``missing_masks`` lists the others. Bone is recorded as ``partial`` (no forearm, hand,
lower-leg or foot bones; v1 has no skull or sternum either). CTs and masks whose NIfTI header
SimpleITK refuses (TotalSegmentator issues #33, #461) are read with nibabel, as TotalSegmentator's own
``resources/convert_dataset_to_nnunet.py`` does.

Speed (docs/datasets.md): a case's masks are read a few at a time in threads (``MASK_READ_THREADS``) and merged
in the order above; an int16 ``ct.nii.gz`` that SimpleITK reads is copied as it is (``nnunet_ready_ct``) instead
of being encoded again.
"""

import csv
import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    apply_known_bad,
    check_labels_file,
    dataset_folder,
    finish_dataset,
    load_known_bad,
    read_case_image,
    read_case_mask,
    record_extras,
    report,
    run_conversion,
    write_case,
)
from nnunet_ctorg.io import write_text_atomic
from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import TOTALSEG_ALL_STRUCTURES, detect_totalseg_version, totalseg_structures

# Columns that v2.0.1's meta.csv has and the earlier releases' do not (used to tell v2.0.1 from v2.0.0).
_V201_COLUMNS = {"manufacturer", "scanner_model", "kvp", "pathology", "pathology_location"}


def find_totalseg_root(source_dir: str | Path) -> Path:
    """The folder with ``meta.csv``: ``source_dir`` or the one folder right below it that has one."""
    root = Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"TotalSegmentator folder not found: {root}")
    if (root / "meta.csv").is_file():
        return root
    below = sorted(p.parent for p in root.glob("*/meta.csv"))
    if len(below) == 1:
        return below[0]
    if below:
        raise ValueError(f"several TotalSegmentator folders below {root}: {[str(p) for p in below]}; pass one")
    raise FileNotFoundError(f"meta.csv not found in {root} or a folder below it: not a TotalSegmentator folder")


def read_meta(root: Path) -> list[dict[str, str]]:
    """Rows of meta.csv (``;``-separated, byte-order mark tolerated) with ``image_id`` and ``split``."""
    meta = root / "meta.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"meta.csv not found in {root}: not a TotalSegmentator folder")
    with open(meta, newline="", encoding="utf-8-sig") as f:  # utf-8-sig drops v2.0.1's byte-order mark
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
                for row in csv.DictReader(f, delimiter=";")]
    if not rows or "image_id" not in rows[0] or "split" not in rows[0]:
        raise ValueError(f"{meta} needs the columns image_id and split (';'-separated); found "
                         f"{sorted(rows[0]) if rows else 'no rows'}")
    bad = sorted({r["split"] for r in rows} - {"train", "val", "test"})
    if bad:
        raise ValueError(f"{meta}: unknown split value(s) {bad}; expected train, val or test")
    return rows


def _mask_names(seg_dir: Path) -> set[str]:
    return {p.name[:-7] for p in seg_dir.glob("*.nii.gz") if not p.name.startswith(".")}


def convert_totalseg_job(job: CaseJob, scheme: LabelScheme) -> None:
    """Merge one case's structure masks into the unified labels and write it."""
    import SimpleITK as sitk

    case = f"TotalSegmentator case {job.inputs['image_id']}"
    folder = Path(job.inputs["folder"])
    quirks: dict = {}
    image = read_case_image(folder / "ct.nii.gz", case, quirks)
    seg_dir = folder / "segmentations"
    if not seg_dir.is_dir():
        raise FileNotFoundError(f"{case}: no segmentations folder in {folder}")
    names = _mask_names(seg_dir)
    version = detect_totalseg_version(names) or job.inputs["version"]
    unknown = sorted(n for n in names if n not in TOTALSEG_ALL_STRUCTURES)
    if unknown:
        quirks["unknown_mask_files"] = unknown

    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    annotated, missing, plan = [], [], []
    # ascending ids: where organs overlap the higher unified id is written last and wins
    for organ in scheme.organs_of("totalseg"):
        expected = scheme.totalseg_structures(organ, totalseg_structures(version))
        present = [s for s in expected if s in names]
        missing += [s for s in expected if s not in present]
        if not present:
            continue
        annotated.append(scheme.labels[organ])
        plan += [(scheme.labels[organ], structure) for structure in present]
    for (label_id, _), mask, found in _read_masks(seg_dir, plan, image, case):
        for kind, entries in found.items():  # merged in plan order: the record is the same as one read at a time
            quirks.setdefault(kind, {}).update(entries)
        _paint(labels, sitk.GetArrayViewFromImage(mask), label_id)
    write_case(Path(job.inputs["out"]), job, image, labels,
               {"source": "totalseg", "source_case": job.inputs["image_id"], "version": version,
                "annotated": annotated, "partial": [i for i in scheme.partial_ids("totalseg") if i in annotated],
                "missing_masks": missing, **record_extras(job, quirks)},
               image_file=nnunet_ready_ct(folder / "ct.nii.gz", image, quirks))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Masks read at the same time in threads: SimpleITK's reader releases the GIL while it inflates a file, which is
# most of a case's time (117 masks of ~27-45 megavoxels each). A few MB of compressed input each, so the number
# of cores is the limit; more than 4 gains little beside the worker processes of run_conversion.
MASK_READ_THREADS = max(1, min(4, _cores()))


def _read_checked_mask(seg_dir: Path, structure: str, image, case: str):
    """One structure's mask with its image's geometry (``read_case_mask``) and the quirks handled reading it;
    a mask with values other than 0 and 1 is an error naming the case."""
    import SimpleITK as sitk

    found: dict = {}
    mask = read_case_mask(seg_dir / f"{structure}.nii.gz", image, case, f"mask {structure}", found)
    values = sitk.GetArrayViewFromImage(mask)
    if not _is_binary(values):
        raise ValueError(f"{case}: mask {structure} is not binary (values {np.unique(values)[:5]})")
    return mask, found


def _read_masks(seg_dir: Path, plan: list[tuple[int, str]], image, case: str,
                threads: int | None = None) -> Iterator[tuple[tuple[int, str], object, dict]]:
    """``(plan item, mask, quirks found)`` for each ``(label id, structure)`` of ``plan``, in plan order, read
    ``threads`` (default ``MASK_READ_THREADS``) at a time and at most ``threads + 1`` ahead; the first error in plan
    order is raised, as when they are read one by one."""
    threads = MASK_READ_THREADS if threads is None else threads
    if threads <= 1:
        for item in plan:
            yield (item, *_read_checked_mask(seg_dir, item[1], image, case))
        return
    todo = iter(plan)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="totalseg-mask")
    try:
        ahead = deque((item, pool.submit(_read_checked_mask, seg_dir, item[1], image, case))
                      for item in islice(todo, threads + 1))
        while ahead:
            item, future = ahead.popleft()
            mask, found = future.result()
            for following in islice(todo, 1):
                ahead.append((following, pool.submit(_read_checked_mask, seg_dir, following[1], image, case)))
            yield item, mask, found
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _is_binary(values: np.ndarray) -> bool:
    """All voxels 0 or 1 (as ``np.isin(np.unique(values), (0, 1)).all()``, without sorting 10^7 voxels)."""
    if values.dtype.kind == "b":
        return True
    if values.dtype.kind == "u":
        return int(values.max(initial=0)) <= 1
    return np.count_nonzero(values) == np.count_nonzero(values == 1)  # NaN, -1, 0.5: non-zero but not 1


def _paint(labels: np.ndarray, values: np.ndarray, label_id: int) -> None:
    """``labels[values > 0] = label_id`` for a binary mask; one-byte masks are used as booleans, not compared."""
    where = values.view(np.bool_) if values.dtype.itemsize == 1 and values.dtype.kind in "biu" else values > 0
    np.copyto(labels, label_id, where=where)


def nnunet_ready_ct(path: Path, image, quirks: dict) -> Path | None:
    """``path`` itself when it can be copied as the case's image instead of being encoded again: SimpleITK read it
    (no nibabel fallback) as int16, which is what ``ct_for_nnunet`` would write; it is gzip-compressed; and nibabel
    reads the same geometry from its header as SimpleITK (so every reader sees the labels where the CT is, as
    with a file SimpleITK wrote). Else ``None``."""
    import SimpleITK as sitk

    if "image_read_with_nibabel" in quirks or image.GetPixelID() != sitk.sitkInt16:
        return None
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return None
    import nibabel

    try:
        affine = nibabel.load(str(path)).affine  # the header only
    except Exception:  # nibabel raises many types for broken headers
        return None
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    matrix = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    if not (np.allclose(ras_to_lps @ affine[:3, :3], matrix, rtol=0, atol=1e-4)
            and np.allclose(ras_to_lps @ affine[:3, 3], image.GetOrigin(), rtol=0, atol=1e-3)):
        return None
    return path


def detect_release(root: Path, rows: list[dict[str, str]], version: str = "auto") -> tuple[str, str]:
    """Structure set (``v1``/``v2``; ``auto``: from the mask files of the first cases that tell) and release
    (``v1``, ``v2.0.0`` or ``v2.0.1``: v2.0.1's meta.csv has the scanner and pathology columns)."""
    if version == "auto":
        version = "v2"
        for row in rows[:50]:
            seg_dir = root / row["image_id"] / "segmentations"
            if seg_dir.is_dir() and (found := detect_totalseg_version(_mask_names(seg_dir))):
                version = found
                break
    if version == "v1":
        return version, "v1"
    return version, "v2.0.1" if _V201_COLUMNS <= set(rows[0]) else "v2.0.0"


def totalseg_jobs(root: Path, version: str = "auto") -> tuple[list[CaseJob], dict[str, list[str]], str, str]:
    """Jobs for every case of meta.csv, the train/val split, the structure set and the release."""
    rows = read_meta(root)
    version, release = detect_release(root, rows, version)
    jobs, split = [], {"train": [], "val": []}
    for row in rows:
        image_id = row["image_id"]
        case = f"totalseg_{image_id}"
        if row["split"] in split:
            split[row["split"]].append(case)
        jobs.append(CaseJob(case=case, split="Ts" if row["split"] == "test" else "Tr",
                            inputs={"image_id": image_id, "source_case": image_id, "folder": str(root / image_id),
                                    "version": version}))
    return jobs, split, version, release


def write_splits(out: Path, split: dict[str, list[str]], done: set[str]) -> Path | None:
    """nnU-Net's splits_final.json (one fold) in ``$nnUNet_preprocessed/<dataset>``, if that is set."""
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        return None
    fold = {k: sorted(c for c in v if c in done) for k, v in split.items()}
    path = Path(preprocessed) / out.name / "splits_final.json"
    write_text_atomic(json.dumps([fold], indent=1), path)
    return path


def convert_totalseg_dataset(source_dir: str | Path, raw_dir: str | Path, dataset_id: int,
                             name: str = "TotalSegmentator", version: str = "auto",
                             scheme: LabelScheme | None = None, num_processes: int = 1, strict: bool = False,
                             progress: bool = False, keep_known_bad: bool = False,
                             known_bad: str | Path | None = None) -> Path:
    """Convert a TotalSegmentator folder into ``raw_dir/DatasetXXX_name``; returns that folder."""
    scheme = scheme or LabelScheme.load(None)
    if version not in ("auto", "v1", "v2"):
        raise ValueError(f"version must be auto, v1 or v2, got {version!r}")
    root = find_totalseg_root(source_dir)
    jobs, split, version, release = totalseg_jobs(root, version)
    jobs, left_out = apply_known_bad(jobs, load_known_bad("totalseg", release, known_bad), keep_known_bad)
    out = dataset_folder(Path(raw_dir), dataset_id, name)
    check_labels_file(out, scheme)
    summary = run_conversion(jobs, partial(convert_totalseg_job, scheme=scheme), out, num_processes, strict,
                             f"TotalSegmentator {release}", progress, known_bad=left_out)
    summary["release"] = release
    summary["unknown_mask_files"] = sorted({n for c in summary["quirks"].get("unknown_mask_files", [])
                                            for n in _record(out, c).get("quirks", {}).get("unknown_mask_files", [])})
    report(summary, out, progress)
    finish_dataset(out, scheme, f"TotalSegmentator {release} (Wasserthal et al. 2023) converted by nnunet-ctorg",
                   "https://doi.org/10.1148/ryai.230024", "CC BY 4.0")
    done = {j.case for j in jobs if j.case in summary["written"] or j.case in summary["skipped"]}
    splits = write_splits(out, split, done)
    if progress:
        print(f"splits_final.json: {splits}" if splits else "nnUNet_preprocessed is not set: no splits_final.json")
    return out


def _record(out: Path, case: str) -> dict:
    return json.loads((out / "annotations" / f"{case}.json").read_text())
