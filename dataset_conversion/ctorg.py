"""CT-ORG (``volume-N.nii.gz`` / ``labels-N.nii.gz``) to an nnU-Net raw dataset.

Cases 0-20 are CT-ORG's manually corrected test split and go to imagesTs/labelsTs. Labels
are stored as floats in CT-ORG: they are rounded, and anything but the ids 0-6 after
rounding is an error naming the case. CT-ORG annotates liver, bladder, lungs, kidneys and
bone in every case and the brain where it is in view: the record of a case lists the brain
only when its label is present.
"""

import re
from collections.abc import Collection
from functools import partial
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    check_label_values,
    dataset_folder,
    finish_dataset,
    load_image_and_labels,
    run_conversion,
    write_case,
)
from nnunet_ctorg.label_scheme import LabelScheme

CTORG_TEST_IDS = range(0, 21)
CTORG_LABEL_VALUES = range(0, 7)
CTORG_BRAIN = 6


def find_ctorg_cases(source_dir: str | Path) -> list[int]:
    """Case numbers N with a ``volume-N.nii.gz`` in ``source_dir``."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"CT-ORG folder not found: {source_dir}")
    ids = sorted(int(m.group(1)) for p in source_dir.iterdir()
                 if (m := re.fullmatch(r"volume-(\d+)\.nii(\.gz)?", p.name)))
    if not ids:
        raise ValueError(f"no volume-N.nii.gz files in {source_dir}: not a CT-ORG folder")
    return ids


def convert_ctorg_job(job: CaseJob, scheme: LabelScheme) -> None:
    """Check, map and write one CT-ORG case."""
    n = job.inputs["number"]
    case = f"CT-ORG case {n}"
    image, values = load_image_and_labels(Path(job.inputs["volume"]), Path(job.inputs["labels"]), case)
    check_label_values(values, CTORG_LABEL_VALUES, case, "CT-ORG")
    unified = scheme.lookup_table("ctorg", max(CTORG_LABEL_VALUES))[values]
    present = set(np.unique(values).tolist())
    annotated = [scheme.labels[o] for o in scheme.organs_of("ctorg")
                 if o != "brain" or CTORG_BRAIN in present]
    write_case(Path(job.inputs["out"]), job, image, unified,
               {"source": "ctorg", "source_case": f"volume-{n}", "annotated": annotated})


def ctorg_jobs(source_dir: Path, test_ids: Collection[int] = CTORG_TEST_IDS) -> list[CaseJob]:
    jobs = []
    for n in find_ctorg_cases(source_dir):
        jobs.append(CaseJob(case=f"ctorg_{n:03d}", split="Ts" if n in test_ids else "Tr",
                            inputs={"number": n, "volume": str(source_dir / f"volume-{n}.nii.gz"),
                                    "labels": str(source_dir / f"labels-{n}.nii.gz")}))
    return jobs


def convert_ctorg_dataset(source_dir: str | Path, raw_dir: str | Path, dataset_id: int, name: str = "CTORG",
                          test_ids: Collection[int] = CTORG_TEST_IDS, scheme: LabelScheme | None = None,
                          num_processes: int = 1, strict: bool = True, progress: bool = False) -> Path:
    """Convert a CT-ORG folder into ``raw_dir/DatasetXXX_name``; returns that folder.

    With ``strict`` (the default for this function) the first bad case raises its error;
    otherwise bad cases are skipped and listed in ``conversion_summary.json``.
    """
    from nnunet_ctorg.dataset_conversion.common import check_labels_file, print_summary

    scheme = scheme or LabelScheme.load(None)
    source_dir = Path(source_dir)
    out = dataset_folder(Path(raw_dir), dataset_id, name)
    check_labels_file(out, scheme)
    summary = run_conversion(ctorg_jobs(source_dir, test_ids), partial(convert_ctorg_job, scheme=scheme), out,
                             num_processes, strict, "CT-ORG", progress)
    finish_dataset(out, scheme, "CT-ORG (Rister et al. 2020) converted by nnunet-ctorg",
                   "https://doi.org/10.1038/s41597-020-00715-8", "CC BY 3.0")
    if progress:
        print_summary(summary, out)
    return out
