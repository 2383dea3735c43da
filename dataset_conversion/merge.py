"""Merge converted nnU-Net datasets into one, with a strategy for unannotated organs.

Inputs are datasets written by the nnunet-ctorg converters (same label scheme, one
annotation record per case). Case names are already prefixed by their source and must be
unique across inputs. Strategies for the organs a case's source does not annotate:

- ``background``: leave them background (naive; teaches the model to miss them);
- ``ignore``: nnU-Net's ignore label (highest id) on the voxels labelled background inside
  the body of such a case, where the true class is unknown; air outside stays background;
- ``pseudo``: filled by teacher models (``completion.complete_folder``; the merge goes to a
  staging folder first, which is removed once the completed dataset is written).

Fixed splits (``splits_final.json`` of the inputs) are kept as one fold: the union of the
train lists (plus every case of inputs without a fixed split) and the union of the val lists.
"""

import json
import os
from functools import partial
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    dataset_folder,
    finish_dataset,
    print_summary,
    run_conversion,
    write_case,
)
from nnunet_ctorg.io import read_image, write_text_atomic
from nnunet_ctorg.label_scheme import LabelScheme


def _keep_background(labels: np.ndarray, image, missing: list[int], ignore_id: int) -> np.ndarray:
    return labels


def _ignore_unknown(labels: np.ndarray, image, missing: list[int], ignore_id: int) -> np.ndarray:
    import SimpleITK as sitk

    from nnunet_ctorg.body import body_mask

    if not missing:
        return labels
    body = body_mask(sitk.GetArrayFromImage(image).astype(np.float32))
    out = labels.copy()
    out[(labels == 0) & body] = ignore_id
    return out


# 'pseudo': merged as background into a staging folder, then completed by the teachers (completion.py)
UNANNOTATED_STRATEGIES = {"background": _keep_background, "ignore": _ignore_unknown, "pseudo": _keep_background}


def find_dataset(raw_dir: Path, dataset_id: int) -> Path:
    found = sorted(raw_dir.glob(f"Dataset{dataset_id:03d}_*"))
    if len(found) != 1:
        raise FileNotFoundError(f"no dataset with id {dataset_id} in {raw_dir}" if not found else
                                f"several datasets with id {dataset_id}: {[p.name for p in found]}")
    return found[0]


def merge_job(job: CaseJob, strategy: str, all_ids: list[int], ignore_id: int) -> None:
    import SimpleITK as sitk

    image_path, label_path = Path(job.inputs["image"]), Path(job.inputs["label"])
    record = dict(job.inputs["record"])
    missing = [i for i in all_ids if i not in record["annotated"]]
    image = read_image(image_path, f"{job.case}: image")
    labels = sitk.GetArrayFromImage(read_image(label_path, f"{job.case}: label map"))
    labels = UNANNOTATED_STRATEGIES[strategy](labels, image, missing, ignore_id)
    record.update({"merged_from": job.inputs["dataset"], "unannotated": strategy if missing else None})
    write_case(Path(job.inputs["out"]), job, image, labels, record, image_file=image_path)


def merged_splits(datasets: list[Path], cases_by_dataset: dict[str, list[str]]) -> list[dict] | None:
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        return None
    train, val, any_fixed = [], [], False
    for ds in datasets:
        path = Path(preprocessed) / ds.name / "splits_final.json"
        if path.is_file():
            fold = json.loads(path.read_text())[0]
            train += fold["train"]
            val += fold["val"]
            any_fixed = True
        else:
            train += cases_by_dataset[ds.name]
    return [{"train": sorted(train), "val": sorted(val)}] if any_fixed else None


def merge_datasets(dataset_ids: list[int], raw_dir: str | Path, dataset_id: int, name: str = "Merged",
                   unannotated: str = "ignore", num_processes: int = 1, strict: bool = True,
                   progress: bool = False, teachers: list | None = None, **completion_options) -> Path:
    """Merge the datasets ``dataset_ids`` of ``raw_dir`` into ``raw_dir/DatasetXXX_name``.

    With ``unannotated="pseudo"``, ``teachers`` (``completion.Teacher``) fill the missing organs;
    ``completion_options`` go to ``completion.complete_folder`` (confidence, device, ...).
    """
    if unannotated not in UNANNOTATED_STRATEGIES:
        raise ValueError(f"unannotated must be one of {sorted(UNANNOTATED_STRATEGIES)}, got {unannotated!r}")
    if (unannotated == "pseudo") != bool(teachers):
        raise ValueError("the 'pseudo' strategy needs teachers (--teacher), and teachers need 'pseudo'")
    if dataset_id in dataset_ids:
        raise ValueError(f"output id {dataset_id} is one of the inputs")
    raw_dir = Path(raw_dir)
    datasets = [find_dataset(raw_dir, i) for i in dataset_ids]
    label_sets = [json.loads((ds / "dataset.json").read_text())["labels"] for ds in datasets]
    labels = {k: v for k, v in label_sets[0].items() if k != "ignore"}
    for ds, other in zip(datasets[1:], label_sets[1:]):
        if {k: v for k, v in other.items() if k != "ignore"} != labels:
            raise ValueError(f"{ds.name} has other labels than {datasets[0].name}: {other} vs {labels}")
    scheme = LabelScheme(labels=labels, sources={})
    ignore_id = len(labels)
    all_ids = [v for v in labels.values() if v]

    jobs, seen, cases_by_dataset = [], {}, {}
    for ds in datasets:
        records_file = ds / "annotated_labels.json"
        if not records_file.is_file():
            raise FileNotFoundError(f"{ds.name} has no annotated_labels.json: convert it with nnunet-ctorg first")
        records = json.loads(records_file.read_text())
        cases_by_dataset[ds.name] = []
        for split in ("Tr", "Ts"):
            for label in sorted((ds / f"labels{split}").glob("*.nii.gz")) if (ds / f"labels{split}").is_dir() else []:
                case = label.name[:-7]
                if case in seen:
                    raise ValueError(f"case {case} is in both {seen[case]} and {ds.name}")
                if case not in records:
                    raise ValueError(f"{ds.name}: case {case} has no annotation record")
                seen[case] = ds.name
                if split == "Tr":
                    cases_by_dataset[ds.name].append(case)
                jobs.append(CaseJob(case=case, split=split, inputs={
                    "image": str(ds / f"images{split}" / f"{case}_0000.nii.gz"), "label": str(label),
                    "record": records[case], "dataset": ds.name}))

    final = dataset_folder(raw_dir, dataset_id, name)
    out = raw_dir / f".{final.name}_merging" if unannotated == "pseudo" else final
    work = partial(merge_job, strategy=unannotated, all_ids=all_ids, ignore_id=ignore_id)
    summary = run_conversion(jobs, work, out, num_processes, strict, f"merging ({unannotated})", progress)
    finish_dataset(out, scheme, f"merge of {', '.join(ds.name for ds in datasets)}; unannotated organs: "
                   f"{unannotated}", extra_labels={"ignore": ignore_id} if unannotated == "ignore" else None)
    splits = merged_splits(datasets, cases_by_dataset)
    if splits is not None:
        done = set(summary["written"]) | set(summary["skipped"])
        splits = [{k: [c for c in v if c in done] for k, v in splits[0].items()}]
        write_text_atomic(json.dumps(splits, indent=1),
                          Path(os.environ["nnUNet_preprocessed"]) / out.name / "splits_final.json")
    if progress:
        print_summary(summary, out)
    if unannotated == "pseudo":
        import shutil

        from nnunet_ctorg.dataset_conversion.completion import complete_folder

        complete_folder(out, final, teachers, progress=progress, **completion_options)
        shutil.rmtree(out)
        if os.environ.get("nnUNet_preprocessed"):
            shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / out.name, ignore_errors=True)
        return final
    return out
