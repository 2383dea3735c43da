"""CT-ORG (``volume-N.nii.gz`` / ``labels-N.nii.gz``) to an nnU-Net raw dataset.

The folder given may be the one holding the files or any folder above it: TCIA's download unpacks to
``OrganSegmentations/volume-N.nii.gz`` (https://doi.org/10.7937/tcia.2019.tt7f4v7o), which is found
below the folder the user passes. Cases 0-20 are CT-ORG's manually corrected test split and go to
imagesTs/labelsTs. Labels are stored as floats in CT-ORG: they are rounded, and anything but the ids
0-6 after rounding is an error naming the case. CT-ORG annotates liver, bladder, lungs, kidneys and
bone in every case and the brain where it is in view: the record of a case lists the brain only when
its label is present. The bone of the training cases is morphology output without the ribs of
abdominal scans (paper 000): their record lists bone as ``partial``. Cases of the known-bad table
(``known_bad_cases.json``) are left out unless ``keep_known_bad``.
"""

import re
from collections.abc import Collection
from functools import partial
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    apply_known_bad,
    check_label_values,
    check_labels_file,
    dataset_folder,
    finish_dataset,
    load_image_and_labels,
    load_known_bad,
    record_extras,
    report,
    run_conversion,
    write_case,
)
from nnunet_ctorg.label_scheme import LabelScheme

CTORG_TEST_IDS = range(0, 21)
CTORG_LABEL_VALUES = range(0, 7)
CTORG_BRAIN = 6
_VOLUME = re.compile(r"volume-(\d+)\.nii(\.gz)?")


def _volume_ids(folder: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VOLUME.fullmatch(p.name)))


def find_ctorg_folder(source_dir: str | Path) -> Path:
    """The folder with CT-ORG's ``volume-N.nii.gz`` files: ``source_dir`` itself, its ``OrganSegmentations``
    (TCIA's layout) or the one folder below it that has them."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"CT-ORG folder not found: {source_dir}")
    for candidate in (source_dir, source_dir / "OrganSegmentations"):
        if candidate.is_dir() and _volume_ids(candidate):
            return candidate
    folders = sorted({p.parent for p in source_dir.rglob("volume-*.nii*") if _VOLUME.fullmatch(p.name)})
    if len(folders) > 1:
        raise ValueError(f"CT-ORG volumes found in several folders below {source_dir}: "
                         f"{[str(f) for f in folders[:4]]}; pass one of them")
    if not folders:
        raise ValueError(f"no volume-N.nii.gz files in {source_dir} or below: not a CT-ORG folder")
    return folders[0]


def find_ctorg_cases(source_dir: str | Path) -> list[int]:
    """Case numbers N with a ``volume-N.nii.gz`` in the CT-ORG folder found from ``source_dir``."""
    return _volume_ids(find_ctorg_folder(source_dir))


def convert_ctorg_job(job: CaseJob, scheme: LabelScheme) -> None:
    """Check, map and write one CT-ORG case."""
    n = job.inputs["number"]
    case = f"CT-ORG case {n}"
    image, values, quirks = load_image_and_labels(Path(job.inputs["volume"]), Path(job.inputs["labels"]), case)
    check_label_values(values, CTORG_LABEL_VALUES, case, "CT-ORG")
    unified = scheme.lookup_table("ctorg", max(CTORG_LABEL_VALUES))[values]
    present = set(np.unique(values).tolist())
    annotated = [scheme.labels[o] for o in scheme.organs_of("ctorg")
                 if o != "brain" or CTORG_BRAIN in present]
    partial_ids = [i for i in scheme.partial_ids("ctorg") if i in annotated] if job.split == "Tr" else []
    write_case(Path(job.inputs["out"]), job, image, unified,
               {"source": "ctorg", "source_case": f"volume-{n}", "annotated": annotated, "partial": partial_ids,
                **record_extras(job, quirks)})


def ctorg_jobs(source_dir: Path, test_ids: Collection[int] = CTORG_TEST_IDS) -> list[CaseJob]:
    folder = find_ctorg_folder(source_dir)
    jobs = []
    for n in _volume_ids(folder):
        volume = next(p for p in (folder / f"volume-{n}.nii.gz", folder / f"volume-{n}.nii") if p.is_file())
        labels = next((p for p in (folder / f"labels-{n}.nii.gz", folder / f"labels-{n}.nii") if p.is_file()),
                      folder / f"labels-{n}.nii.gz")
        jobs.append(CaseJob(case=f"ctorg_{n:03d}", split="Ts" if n in test_ids else "Tr",
                            inputs={"number": n, "source_case": f"volume-{n}", "volume": str(volume),
                                    "labels": str(labels)}))
    return jobs


def convert_ctorg_dataset(source_dir: str | Path, raw_dir: str | Path, dataset_id: int, name: str = "CTORG",
                          test_ids: Collection[int] = CTORG_TEST_IDS, scheme: LabelScheme | None = None,
                          num_processes: int = 1, strict: bool = False, progress: bool = False,
                          keep_known_bad: bool = False, known_bad: str | Path | None = None) -> Path:
    """Convert a CT-ORG folder into ``raw_dir/DatasetXXX_name``; returns that folder.

    Bad cases are skipped and listed in ``conversion_summary.json``, or with ``strict`` the first one
    raises its error; a run that converts no case raises. ``known_bad``: another known-bad-case table.
    """
    scheme = scheme or LabelScheme.load(None)
    jobs, left_out = apply_known_bad(ctorg_jobs(Path(source_dir), test_ids), load_known_bad("ctorg", None, known_bad),
                                     keep_known_bad)
    out = dataset_folder(Path(raw_dir), dataset_id, name)
    check_labels_file(out, scheme)
    summary = run_conversion(jobs, partial(convert_ctorg_job, scheme=scheme), out, num_processes, strict,
                             "CT-ORG", progress, known_bad=left_out)
    report(summary, out, progress)
    finish_dataset(out, scheme, "CT-ORG (Rister et al. 2020) converted by nnunet-ctorg",
                   "https://doi.org/10.1038/s41597-020-00715-8", "CC BY 3.0")
    return out
