"""TotalSegmentator (v1 and v2) to an nnU-Net raw dataset.

Layout read: ``ROOT/meta.csv`` (``;``-separated, columns ``image_id`` and ``split``) and per
case ``ROOT/<image_id>/ct.nii.gz`` plus ``ROOT/<image_id>/segmentations/<structure>.nii.gz``.
Cases of the ``train`` and ``val`` splits go to imagesTr with a fixed ``splits_final.json``
(one fold: train / val) in ``nnUNet_preprocessed``; ``test`` cases go to imagesTs. The binary
masks of each organ's structures (see ``nnunet_ctorg.label_scheme``) are merged; where masks
of different organs overlap, the organ with the higher unified id wins. A missing mask file
is tolerated and recorded: the organ counts as annotated if at least one of its structure
files exists, and ``missing_masks`` lists the others.
"""

import csv
import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    check_labels_file,
    dataset_folder,
    finish_dataset,
    print_summary,
    run_conversion,
    write_case,
)
from nnunet_ctorg.io import read_ct, read_image, same_geometry, write_text_atomic
from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import TOTALSEG_V2_ONLY, TOTALSEG_V2_STRUCTURES, totalseg_structures


def read_meta(root: Path) -> list[dict[str, str]]:
    """Rows of meta.csv with ``image_id`` and ``split``; errors name the problem."""
    meta = root / "meta.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"meta.csv not found in {root}: not a TotalSegmentator folder")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    if not rows or "image_id" not in rows[0] or "split" not in rows[0]:
        raise ValueError(f"{meta} needs the columns image_id and split (';'-separated)")
    bad = sorted({r["split"] for r in rows} - {"train", "val", "test"})
    if bad:
        raise ValueError(f"{meta}: unknown split value(s) {bad}; expected train, val or test")
    return rows


def convert_totalseg_job(job: CaseJob, scheme: LabelScheme) -> None:
    """Merge one case's structure masks into the unified labels and write it."""
    import SimpleITK as sitk

    case = f"TotalSegmentator case {job.inputs['image_id']}"
    folder = Path(job.inputs["folder"])
    image = read_ct(folder / "ct.nii.gz", case)
    seg_dir = folder / "segmentations"
    if not seg_dir.is_dir():
        raise FileNotFoundError(f"{case}: no segmentations folder in {folder}")
    unknown = sorted(p.name for p in seg_dir.glob("*.nii.gz") if p.name[:-7] not in TOTALSEG_V2_STRUCTURES)
    if unknown:
        raise ValueError(f"{case}: unknown structure mask file(s) {unknown[:5]}")

    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    annotated, missing = [], []
    # ascending ids: where organs overlap the higher unified id is written last and wins
    for organ in scheme.organs_of("totalseg"):
        expected = scheme.totalseg_structures(organ, job.inputs["structures"])
        present = [s for s in expected if (seg_dir / f"{s}.nii.gz").is_file()]
        missing += [s for s in expected if s not in present]
        if not present:
            continue
        annotated.append(scheme.labels[organ])
        for structure in present:
            mask = read_image(seg_dir / f"{structure}.nii.gz", f"{case}: mask {structure}")
            if not same_geometry(mask, image):
                raise ValueError(f"{case}: mask {structure} differs in geometry from ct.nii.gz "
                                 f"(size {mask.GetSize()} vs {image.GetSize()})")
            values = sitk.GetArrayViewFromImage(mask)
            if not np.isin(np.unique(values), (0, 1)).all():
                raise ValueError(f"{case}: mask {structure} is not binary (values {np.unique(values)[:5]})")
            labels[values > 0] = scheme.labels[organ]
    write_case(Path(job.inputs["out"]), job, image, labels,
               {"source": "totalseg", "source_case": job.inputs["image_id"], "annotated": annotated,
                "missing_masks": missing})


def totalseg_jobs(root: Path, version: str = "auto") -> tuple[list[CaseJob], dict[str, list[str]], str]:
    """Jobs for every case of meta.csv, the train/val split, and the version ("auto": detected)."""
    rows = read_meta(root)
    if version == "auto":  # v2 if any of the first cases has a mask that only v2 has
        version = "v2" if any((root / row["image_id"].strip() / "segmentations" / f"{s}.nii.gz").is_file()
                              for row in rows[:20] for s in TOTALSEG_V2_ONLY) else "v1"
    structures = totalseg_structures(version)
    jobs, split = [], {"train": [], "val": []}
    for row in rows:
        image_id = row["image_id"].strip()
        case = f"totalseg_{image_id}"
        if row["split"] in split:
            split[row["split"]].append(case)
        jobs.append(CaseJob(case=case, split="Ts" if row["split"] == "test" else "Tr",
                            inputs={"image_id": image_id, "folder": str(root / image_id), "structures": structures}))
    return jobs, split, version


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
                             scheme: LabelScheme | None = None, num_processes: int = 1, strict: bool = True,
                             progress: bool = False) -> Path:
    """Convert a TotalSegmentator folder into ``raw_dir/DatasetXXX_name``; returns that folder."""
    scheme = scheme or LabelScheme.load(None)
    root = Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"TotalSegmentator folder not found: {root}")
    if version not in ("auto", "v1", "v2"):
        raise ValueError(f"version must be auto, v1 or v2, got {version!r}")
    jobs, split, version = totalseg_jobs(root, version)
    out = dataset_folder(Path(raw_dir), dataset_id, name)
    check_labels_file(out, scheme)
    summary = run_conversion(jobs, partial(convert_totalseg_job, scheme=scheme), out, num_processes, strict,
                             f"TotalSegmentator {version}", progress)
    finish_dataset(out, scheme, f"TotalSegmentator {version} (Wasserthal et al. 2023) converted by nnunet-ctorg",
                   "https://doi.org/10.1148/ryai.230024", "CC BY 4.0")
    done = {j.case for j in jobs if j.case not in summary["failed"]}
    splits = write_splits(out, split, done)
    if progress:
        print_summary(summary, out)
        print(f"splits_final.json: {splits}" if splits else "nnUNet_preprocessed is not set: no splits_final.json")
    return out
