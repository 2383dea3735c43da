"""AbdomenCT-1K to an nnU-Net raw dataset.

The download (github.com/JunMa11/AbdomenCT-1K) has 1062 images ``Case_XXXXX_0000.nii.gz`` spread
over part folders (``AbdomenCT-1K-ImagePart1..3``) and 1000 masks ``Case_XXXXX.nii.gz`` in ``Mask``
(AbdomenCT-1K issue #6): both are found anywhere below the folder given and paired by case number.
Labels 1 liver, 2 kidney, 3 spleen, 4 pancreas; every case annotates all four (a case without a
spleen in view has no spleen voxels, AbdomenCT-1K issue #8). All labelled cases go to imagesTr.

Images without a mask are not errors: they are listed in the summary (``unlabelled_images``) and
not copied; masks without an image are listed as ``masks_without_images``. About 30 cases have a
NIfTI header SimpleITK refuses (issue #6): they are read with nibabel (``nnunet_ctorg.io``). Cases of
the known-bad table: the LiTS-derived cases whose header claims 1 mm (issue #27) are left out unless
``keep_known_bad``; the duplicate pair 297/928 (issue #28) is kept in one fold.
"""

import re
from functools import partial
from pathlib import Path

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

ABDOMENCT1K_LABEL_VALUES = range(0, 5)


def find_abdomenct1k_files(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Images and masks by case number, found anywhere below ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(f"AbdomenCT-1K folder not found: {root}")
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("Case_*.nii*")):
        if path.name.startswith("."):
            continue
        if m := re.fullmatch(r"Case_(\d+)_0000\.nii(\.gz)?", path.name):
            images.setdefault(m.group(1), []).append(path)
        elif m := re.fullmatch(r"Case_(\d+)\.nii(\.gz)?", path.name):
            masks.setdefault(m.group(1), []).append(path)
    if not images:
        raise ValueError(f"no Case_XXXXX_0000.nii.gz images under {root}: not an AbdomenCT-1K folder")
    return images, masks


def abdomenct1k_jobs(root: Path) -> tuple[list[CaseJob], dict[str, str], dict[str, str]]:
    """One job per image with a mask; the images without a mask and the masks without an image."""
    images, masks = find_abdomenct1k_files(root)
    jobs = [CaseJob(case=f"abdomenct1k_{number}", split="Tr",
                    inputs={"number": number, "source_case": f"Case_{number}",
                            "images": [str(p) for p in images[number]], "masks": [str(p) for p in masks[number]]})
            for number in sorted(images) if number in masks]
    unlabelled = {f"Case_{n}": str(images[n][0]) for n in sorted(images) if n not in masks}
    orphans = {f"Case_{n}": str(masks[n][0]) for n in sorted(masks) if n not in images}
    return jobs, unlabelled, orphans


def convert_abdomenct1k_job(job: CaseJob, scheme: LabelScheme) -> None:
    case = f"AbdomenCT-1K case {job.inputs['number']}"
    images, masks = job.inputs["images"], job.inputs["masks"]
    if len(images) > 1 or len(masks) > 1:
        raise ValueError(f"{case}: found more than one file for it: {images + masks}")
    image, values, quirks = load_image_and_labels(Path(images[0]), Path(masks[0]), case)
    check_label_values(values, ABDOMENCT1K_LABEL_VALUES, case, "AbdomenCT-1K")
    unified = scheme.lookup_table("abdomenct1k", max(ABDOMENCT1K_LABEL_VALUES))[values]
    annotated = [scheme.labels[o] for o in scheme.organs_of("abdomenct1k")]
    write_case(Path(job.inputs["out"]), job, image, unified,
               {"source": "abdomenct1k", "source_case": f"Case_{job.inputs['number']}", "annotated": annotated,
                "partial": [i for i in scheme.partial_ids("abdomenct1k") if i in annotated],
                **record_extras(job, quirks)})


def convert_abdomenct1k_dataset(source_dir: str | Path, raw_dir: str | Path, dataset_id: int,
                                name: str = "AbdomenCT1K", scheme: LabelScheme | None = None,
                                num_processes: int = 1, strict: bool = False, progress: bool = False,
                                keep_known_bad: bool = False, known_bad: str | Path | None = None) -> Path:
    """Convert an AbdomenCT-1K folder into ``raw_dir/DatasetXXX_name``; returns that folder."""
    scheme = scheme or LabelScheme.load(None)
    jobs, unlabelled, orphans = abdomenct1k_jobs(Path(source_dir))
    jobs, left_out = apply_known_bad(jobs, load_known_bad("abdomenct1k", None, known_bad), keep_known_bad)
    out = dataset_folder(Path(raw_dir), dataset_id, name)
    check_labels_file(out, scheme)
    summary = run_conversion(jobs, partial(convert_abdomenct1k_job, scheme=scheme), out, num_processes, strict,
                             "AbdomenCT-1K", progress, known_bad=left_out)
    summary.update(unlabelled_images=unlabelled, masks_without_images=orphans)
    report(summary, out, progress)
    finish_dataset(out, scheme, "AbdomenCT-1K (Ma et al. 2022) converted by nnunet-ctorg",
                   "https://doi.org/10.1109/TPAMI.2021.3100536", "CC BY-NC-SA")
    return out
