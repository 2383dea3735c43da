"""AbdomenCT-1K to an nnU-Net raw dataset.

Images ``Case_XXXXX_0000.nii.gz`` may be spread over several part folders
(``AbdomenCT-1K-ImagePart1..3``) and masks ``Case_XXXXX.nii.gz`` lie in another (``Mask``):
both are found anywhere under the source folder and paired by case number. Labels 1 liver,
2 kidney, 3 spleen, 4 pancreas; every case annotates all four. All cases go to imagesTr.
"""

import re
from functools import partial
from pathlib import Path

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    check_label_values,
    check_labels_file,
    dataset_folder,
    finish_dataset,
    load_image_and_labels,
    print_summary,
    run_conversion,
    write_case,
)
from nnunet_ctorg.label_scheme import LabelScheme

ABDOMENCT1K_LABEL_VALUES = range(0, 5)


def abdomenct1k_jobs(root: Path) -> list[CaseJob]:
    """One job per image; an image without a mask still gets a job (it fails with a clear error)."""
    if not root.is_dir():
        raise FileNotFoundError(f"AbdomenCT-1K folder not found: {root}")
    images, masks = {}, {}
    for path in root.rglob("Case_*.nii.gz"):
        if m := re.fullmatch(r"Case_(\d+)_0000\.nii\.gz", path.name):
            images.setdefault(m.group(1), []).append(path)
        elif m := re.fullmatch(r"Case_(\d+)\.nii\.gz", path.name):
            masks.setdefault(m.group(1), []).append(path)
    if not images:
        raise ValueError(f"no Case_XXXXX_0000.nii.gz images under {root}: not an AbdomenCT-1K folder")
    jobs = []
    for number in sorted(images):
        jobs.append(CaseJob(case=f"abdomenct1k_{number}", split="Tr",
                            inputs={"number": number, "images": [str(p) for p in images[number]],
                                    "masks": [str(p) for p in masks.get(number, [])]}))
    return jobs


def convert_abdomenct1k_job(job: CaseJob, scheme: LabelScheme) -> None:
    case = f"AbdomenCT-1K case {job.inputs['number']}"
    images, masks = job.inputs["images"], job.inputs["masks"]
    if len(images) > 1 or len(masks) > 1:
        raise ValueError(f"{case}: found more than one file for it: {images + masks}")
    if not masks:
        raise FileNotFoundError(f"{case}: no mask Case_{job.inputs['number']}.nii.gz found")
    image, values = load_image_and_labels(Path(images[0]), Path(masks[0]), case)
    check_label_values(values, ABDOMENCT1K_LABEL_VALUES, case, "AbdomenCT-1K")
    unified = scheme.lookup_table("abdomenct1k", max(ABDOMENCT1K_LABEL_VALUES))[values]
    write_case(Path(job.inputs["out"]), job, image, unified,
               {"source": "abdomenct1k", "source_case": f"Case_{job.inputs['number']}",
                "annotated": [scheme.labels[o] for o in scheme.organs_of("abdomenct1k")]})


def convert_abdomenct1k_dataset(source_dir: str | Path, raw_dir: str | Path, dataset_id: int,
                                name: str = "AbdomenCT1K", scheme: LabelScheme | None = None,
                                num_processes: int = 1, strict: bool = True, progress: bool = False) -> Path:
    """Convert an AbdomenCT-1K folder into ``raw_dir/DatasetXXX_name``; returns that folder."""
    scheme = scheme or LabelScheme.load(None)
    out = dataset_folder(Path(raw_dir), dataset_id, name)
    check_labels_file(out, scheme)
    summary = run_conversion(abdomenct1k_jobs(Path(source_dir)), partial(convert_abdomenct1k_job, scheme=scheme),
                             out, num_processes, strict, "AbdomenCT-1K", progress)
    finish_dataset(out, scheme, "AbdomenCT-1K (Ma et al. 2022) converted by nnunet-ctorg",
                   "https://doi.org/10.1109/TPAMI.2021.3100536", "CC BY-NC-SA")
    if progress:
        print_summary(summary, out)
    return out
