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
"""

import csv
import json
import os
from functools import partial
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
    annotated, missing = [], []
    # ascending ids: where organs overlap the higher unified id is written last and wins
    for organ in scheme.organs_of("totalseg"):
        expected = scheme.totalseg_structures(organ, totalseg_structures(version))
        present = [s for s in expected if s in names]
        missing += [s for s in expected if s not in present]
        if not present:
            continue
        annotated.append(scheme.labels[organ])
        for structure in present:
            mask = read_case_mask(seg_dir / f"{structure}.nii.gz", image, case, f"mask {structure}", quirks)
            values = sitk.GetArrayViewFromImage(mask)
            if not np.isin(np.unique(values), (0, 1)).all():
                raise ValueError(f"{case}: mask {structure} is not binary (values {np.unique(values)[:5]})")
            labels[values > 0] = scheme.labels[organ]
    write_case(Path(job.inputs["out"]), job, image, labels,
               {"source": "totalseg", "source_case": job.inputs["image_id"], "version": version,
                "annotated": annotated, "partial": [i for i in scheme.partial_ids("totalseg") if i in annotated],
                "missing_masks": missing, **record_extras(job, quirks)})


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
