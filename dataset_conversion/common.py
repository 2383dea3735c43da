"""Machinery shared by the dataset converters: checked reading, atomic per-case output,
resumable parallel batches with a summary, and the dataset-level files.

Output layout (nnU-Net raw format plus one record per case)::

    DatasetXXX_Name/imagesTr/CASE_0000.nii.gz   labelsTr/CASE.nii.gz   (imagesTs/labelsTs alike)
    DatasetXXX_Name/annotations/CASE.json        which unified labels the source annotates
    DatasetXXX_Name/fingerprints/CASE.npz        the image's fingerprint (duplicates.py)
    DatasetXXX_Name/annotated_labels.json        all records, written at the end
    DatasetXXX_Name/dataset.json                 nnU-Net's generate_dataset_json
"""

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.duplicates import write_fingerprint
from nnunet_ctorg.io import (
    conform_geometry,
    copy_file_atomic,
    read_ct_tolerant,
    read_image_tolerant,
    same_geometry,
    write_image_atomic,
    write_text_atomic,
)
from nnunet_ctorg.label_scheme import LabelScheme


@dataclass
class CaseJob:
    """One case to convert: its nnU-Net id, split ("Tr"/"Ts") and source files."""

    case: str
    split: str
    inputs: dict[str, object] = field(default_factory=dict)


def raw_root(raw_dir: str | Path | None) -> Path:
    """``raw_dir`` or ``$nnUNet_raw``; a clear error when neither is given."""
    value = raw_dir if raw_dir is not None else os.environ.get("nnUNet_raw")
    if not value:
        raise ValueError("no output folder: set nnUNet_raw or pass -o RAW_DIR")
    return Path(value)


def dataset_folder(raw_dir: Path, dataset_id: int, name: str) -> Path:
    """``raw_dir/DatasetXXX_name``; refuses an id already used by a dataset of another name."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be in 1..999, got {dataset_id}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"dataset name must be letters, digits, '-' or '_', got {name!r}")
    out = raw_dir / f"Dataset{dataset_id:03d}_{name}"
    if raw_dir.is_dir():
        for other in raw_dir.glob(f"Dataset{dataset_id:03d}_*"):
            if other.name != out.name:
                raise ValueError(f"dataset id {dataset_id} is already used by {other}; choose another -d")
    return out


def check_labels_file(out: Path, scheme: LabelScheme) -> None:
    """Refuse to add cases to an existing dataset whose dataset.json has other labels."""
    existing = out / "dataset.json"
    if existing.is_file():
        labels = json.loads(existing.read_text()).get("labels", {})
        if {k: v for k, v in labels.items() if k != "ignore"} != scheme.labels:
            raise ValueError(f"{out} exists with other labels ({labels}); use another dataset id or remove it")


def read_case_image(image_path: Path, case: str, quirks: dict):
    """The CT of ``case`` (nibabel fallback for headers SimpleITK refuses, recorded in ``quirks``)."""
    image, fallback = read_ct_tolerant(image_path, case)
    if fallback:
        quirks["image_read_with_nibabel"] = fallback
    return image


def read_case_mask(mask_path: Path, image, case: str, what: str, quirks: dict):
    """A label map or mask of ``case`` with its image's geometry: read with the fallback, 3-D, within half a
    voxel and 1e-3 rad of the image (then given the image's geometry); each fix is recorded in ``quirks``."""
    mask, fallback = read_image_tolerant(mask_path, f"{case}: {what}")
    if mask.GetDimension() != 3:
        raise ValueError(f"{case}: the {what} must be 3-D, got size {mask.GetSize()}")
    mask, correction = conform_geometry(mask, image, f"{case}: {what}")
    if fallback:
        quirks.setdefault("masks_read_with_nibabel", {})[what] = fallback["direction_correction_rad"]
    if correction:
        quirks.setdefault("geometry_corrected", {})[what] = correction
    return mask


def load_image_and_labels(image_path: Path, label_path: Path, case: str):
    """Read a CT and its label map and check them; returns (image, label array, quirks handled)."""
    import SimpleITK as sitk

    quirks: dict = {}
    image = read_case_image(image_path, case, quirks)
    label = read_case_mask(label_path, image, case, "label map", quirks)
    values = sitk.GetArrayFromImage(label)
    if np.issubdtype(values.dtype, np.floating):
        rounded = np.rint(values)
        if np.abs(values - rounded).max(initial=0) > 1e-3:
            bad = values[np.abs(values - rounded) > 1e-3][0]
            raise ValueError(f"{case}: labels are not whole numbers (e.g. {bad})")
        values = rounded
    return image, values.astype(np.int64), quirks


def check_label_values(values: np.ndarray, allowed: Sequence[int], case: str, source: str) -> None:
    unexpected = sorted(set(np.unique(values).tolist()) - set(allowed))
    if unexpected:
        raise ValueError(f"{case}: unexpected label values {unexpected}; {source} uses {sorted(allowed)}")


def ct_for_nnunet(image):
    """The CT as int16 when it holds whole HU values in range, else float32."""
    import SimpleITK as sitk

    hu = sitk.GetArrayViewFromImage(image)
    whole = np.array_equal(hu, np.rint(hu)) and hu.min() >= -32768 and hu.max() <= 32767
    return sitk.Cast(image, sitk.sitkInt16 if whole else sitk.sitkFloat32)


def case_paths(out: Path, job: CaseJob) -> tuple[Path, Path, Path]:
    return (out / f"images{job.split}" / f"{job.case}_0000.nii.gz", out / f"labels{job.split}" / f"{job.case}.nii.gz",
            out / "annotations" / f"{job.case}.json")


def case_is_done(out: Path, job: CaseJob) -> bool:
    """All three outputs exist, their headers read and image and labels share geometry."""
    import SimpleITK as sitk

    image, label, record = case_paths(out, job)
    if not (image.is_file() and label.is_file() and record.is_file()):
        return False
    try:
        headers = []
        for path in (image, label):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            headers.append(reader)
        json.loads(record.read_text())
    except (RuntimeError, ValueError):
        return False
    return same_geometry(*headers)


def write_case(out: Path, job: CaseJob, image, labels: np.ndarray, record: dict,
               image_file: Path | None = None) -> None:
    """Write labels, record and image atomically (the image last: it marks the case done).

    ``image_file``: an nnU-Net-ready copy of the image already on disk, copied as it is instead
    of being encoded again.
    """
    import SimpleITK as sitk

    image_path, label_path, record_path = case_paths(out, job)
    label = sitk.GetImageFromArray(labels.astype(np.uint8))
    label.CopyInformation(image)
    write_image_atomic(label, label_path)
    write_text_atomic(json.dumps({"case": job.case, **record}, indent=1), record_path)
    write_fingerprint(out, job.case, image)  # finds the same scan in other datasets (duplicates.py)
    if image_file is None:
        write_image_atomic(ct_for_nnunet(image), image_path)
    else:
        copy_file_atomic(image_file, image_path)


KNOWN_BAD_ACTIONS = ("skip", "flag", "same_fold")


def load_known_bad(source: str, release: str | None = None, path: str | Path | None = None) -> dict[str, dict]:
    """Entries of the known-bad-case table (``known_bad_cases.json`` beside this module, or ``path``) for
    ``source`` and its ``release``, by source case name (``volume-19``, ``s0184``, ``Case_00297``)."""
    from nnunet_ctorg.io import read_json

    path = Path(path) if path is not None else Path(__file__).with_name("known_bad_cases.json")
    table = read_json(path, "known-bad-case table")
    entries = table.get("cases") if isinstance(table, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"known-bad-case table {path}: expected {{\"cases\": [...]}}")
    found = {}
    for entry in entries:
        if entry.get("action") not in KNOWN_BAD_ACTIONS or not entry.get("case") or not entry.get("reason"):
            raise ValueError(f"known-bad-case table {path}: entry {entry} needs case, reason and an action among "
                             f"{KNOWN_BAD_ACTIONS}")
        if entry.get("source") == source and (release is None or release in entry.get("releases", [release])):
            found[entry["case"]] = entry
    return found


def apply_known_bad(jobs: list[CaseJob], table: dict[str, dict], keep_known_bad: bool = False
                    ) -> tuple[list[CaseJob], dict[str, str]]:
    """Jobs to run and the known-bad cases left out (case -> reason). ``flag`` and ``same_fold`` entries, and
    every entry with ``keep_known_bad``, stay and carry ``known_issue`` (and ``fold_group``) to their record."""
    kept, left_out = [], {}
    for job in jobs:
        entry = table.get(job.inputs.get("source_case", ""))
        if entry is None:
            kept.append(job)
        elif entry["action"] == "skip" and not keep_known_bad:
            left_out[job.case] = f"{entry['reason']} ({entry.get('reference', 'no reference')})"
        else:
            job.inputs["known_issue"] = f"{entry['reason']} ({entry.get('reference', 'no reference')})"
            if entry["action"] == "same_fold":
                job.inputs["fold_group"] = entry["group"]
            kept.append(job)
    return kept, left_out


def record_extras(job: CaseJob, quirks: dict) -> dict:
    """The parts of a case record that say what was handled: quirks, known issue, fold group."""
    extras = {"quirks": quirks} if quirks else {}
    for key in ("known_issue", "fold_group"):
        if job.inputs.get(key):
            extras[key] = job.inputs[key]
    return extras


def _run_job(convert: Callable[[CaseJob], None], job: CaseJob) -> tuple[str, str | None]:
    try:
        convert(job)
    except (ValueError, FileNotFoundError) as e:
        for path in case_paths(Path(job.inputs["out"]), job):  # no partial case stays behind
            path.unlink(missing_ok=True)
        return job.case, str(e)
    return job.case, None


def run_conversion(jobs: list[CaseJob], convert: Callable[[CaseJob], None], out: Path, num_processes: int = 1,
                   strict: bool = False, desc: str = "converting", progress: bool = True,
                   known_bad: dict[str, str] | None = None) -> dict:
    """Convert ``jobs`` (skipping finished cases) in ``num_processes`` workers; returns the summary.

    A bad case is reported and skipped, or with ``strict`` stops the run with its error. The summary lists
    the cases written, already there and failed, the ``known_bad`` cases left out, and for each quirk
    handled (read from the case records) the cases it was handled in.
    """
    from functools import partial

    from nnunet_ctorg.parallel import map_with_progress

    for job in jobs:
        job.inputs["out"] = str(out)
    todo = [j for j in jobs if not case_is_done(out, j)]
    summary = {"written": [], "skipped": [j.case for j in jobs if j not in todo], "failed": {},
               "known_bad_left_out": dict(known_bad or {}), "quirks": {}}
    for case, error in map_with_progress(partial(_run_job, convert), todo, num_processes, desc, progress=progress):
        if error is None:
            summary["written"].append(case)
        elif strict:
            raise ValueError(error)
        else:
            summary["failed"][case] = error
            if progress:
                print(f"skipped {error}", file=sys.stderr)
    for job in jobs:
        record_path = case_paths(out, job)[2]
        if job.case in summary["failed"] or not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        for kind in [*record.get("quirks", {}), *(["known_issue"] if record.get("known_issue") else [])]:
            summary["quirks"].setdefault(kind, []).append(job.case)
    return summary


def finish_dataset(out: Path, scheme: LabelScheme, description: str, reference: str = "", license: str = "",
                   extra_labels: dict[str, int] | None = None) -> None:
    """Write dataset.json (nnU-Net's generator) and the collected per-case annotation records."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    n_train = len(list((out / "labelsTr").glob("*.nii.gz"))) if (out / "labelsTr").is_dir() else 0
    records = {}
    for path in sorted((out / "annotations").glob("*.json")) if (out / "annotations").is_dir() else []:
        record = json.loads(path.read_text())
        records[record["case"]] = record
    write_text_atomic(json.dumps(records, indent=1), out / "annotated_labels.json")
    generate_dataset_json(str(out), channel_names={0: "CT"}, labels={**scheme.labels, **(extra_labels or {})},
                          num_training_cases=n_train, file_ending=".nii.gz", dataset_name=out.name,
                          description=description, reference=reference, license=license,
                          converted_by="nnunet-ctorg")


def print_summary(summary: dict, out: Path) -> None:
    """Print the summary and write it to ``out/conversion_summary.json``."""
    print(f"{len(summary['written'])} case(s) written, {len(summary['skipped'])} already there, "
          f"{len(summary['failed'])} failed, {len(summary.get('known_bad_left_out', {}))} known bad left out "
          f"-> {out}")
    for case, error in summary["failed"].items():
        print(f"  failed {case}: {error}")
    for case, reason in summary.get("known_bad_left_out", {}).items():
        print(f"  left out {case} (known bad; --keep_known_bad converts it): {reason}")
    for kind, cases in summary.get("quirks", {}).items():
        print(f"  handled {kind}: {len(cases)} case(s), e.g. {', '.join(cases[:3])}")
    for key, what in (("unlabelled_images", "image(s) without a mask (not converted, listed in the summary)"),
                      ("masks_without_images", "mask(s) without an image"),
                      ("unknown_mask_files", "unknown mask file name(s), ignored")):
        if summary.get(key):
            print(f"  {len(summary[key])} {what}, e.g. {', '.join(list(summary[key])[:3])}")
    write_text_atomic(json.dumps(summary, indent=1), out / "conversion_summary.json")


def report(summary: dict, out: Path, progress: bool) -> None:
    """Write (and with ``progress`` print) the summary; a ``ValueError`` when the dataset has no case."""
    if progress:
        print_summary(summary, out)
    else:
        write_text_atomic(json.dumps(summary, indent=1), out / "conversion_summary.json")
    if not summary["written"] and not summary["skipped"]:
        first = next(iter(summary["failed"].values()), "no case found")
        raise ValueError(f"no case was converted ({len(summary['failed'])} failed; first: {first}); "
                         f"see {out / 'conversion_summary.json'}")
