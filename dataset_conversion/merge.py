"""Merge converted nnU-Net datasets into one, with a strategy for unannotated organs.

Inputs are datasets written by the nnunet-ctorg converters (same label scheme, one
annotation record per case). Case names are already prefixed by their source and must be
unique across inputs. Strategies for the organs a case's source does not annotate:

- ``background``: leave them background (naive; teaches the model to miss them);
- ``ignore``: nnU-Net's ignore label (highest id) on the voxels labelled background inside
  the body of such a case, where the true class is unknown; air outside stays background.
  An organ a source annotates only in part (the record's ``partial``: TotalSegmentator's bone,
  CT-ORG's training bone) gets the ignore label on the unlabelled body voxels that could belong
  to it: for bone, ``bone_candidates`` (dense voxels grown by hysteresis, closed by 5 mm so the
  marrow between cortices goes too, >= 0 HU; after paper 000's bone thresholds); another partial
  organ gets it on every unlabelled body voxel. Contrast-filled vessels and calcifications that no
  organ claims are ignored as well (no loss, no wrong label).
  The counts are recorded per case (``ignored_voxels``);
- ``pseudo``: filled by teacher models (``completion.complete_folder``; the merge goes to a
  staging folder first, which is removed once the completed dataset is written).

Splits: five folds stratified by source (each source's training cases are dealt over the folds,
so every source appears in every validation set); cases of one ``fold_group`` (the known-bad
table's duplicates) stay in one fold; test cases (imagesTs, e.g. TotalSegmentator's official
test split) are never in a fold. Written to ``$nnUNet_preprocessed/<dataset>/splits_final.json``.
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
    report,
    run_conversion,
    write_case,
)
from nnunet_ctorg.io import read_image, write_text_atomic
from nnunet_ctorg.label_scheme import LabelScheme


def _keep_background(labels: np.ndarray, image, missing: list[int], ignore_id: int, partial: dict[int, str]
                     ) -> tuple[np.ndarray, dict]:
    return labels, {}


# Voxels that could be bone. Paper 000 thresholds CT-ORG's bone at tau2 = 200 HU (the hard exterior of a
# bone), closes it and keeps >= tau1 = 0 HU. At 3 mm, partial volume puts a quarter of the rib voxels of the
# real CT of ../shared below 154 HU (median 220): a plain 200-HU threshold finds 58 % of them. Hysteresis
# does better there: the components of >= 100 HU that hold a >= 250 HU core, closed by 5 mm (marrow between
# cortices), >= 0 HU: 97 % of the rib voxels, 92 % of all bone voxels, 1.6 % of the body voxels
# that no TotalSegmentator structure labels.
BONE_CORE_HU = 250.0
BONE_GROW_HU = 100.0
BONE_MIN_HU = 0.0
BONE_CLOSING_MM = 5.0


def bone_candidates(hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Voxels that could be bone: the 26-connected components of >= ``BONE_GROW_HU`` that contain a voxel of
    >= ``BONE_CORE_HU``, closed by ``BONE_CLOSING_MM`` and kept where >= ``BONE_MIN_HU``."""
    import cc3d
    import edt

    components = cc3d.connected_components(hu >= BONE_GROW_HU, connectivity=26)
    cores = np.unique(components[hu >= BONE_CORE_HU])
    grown = np.isin(components, cores[cores > 0])
    if not grown.any():
        return grown
    dilated = edt.edt(~grown, anisotropy=spacing_zyx, black_border=False) <= BONE_CLOSING_MM
    closed = edt.edt(dilated, anisotropy=spacing_zyx, black_border=False) > BONE_CLOSING_MM
    return (closed | grown) & (hu >= BONE_MIN_HU)


def _ignore_unknown(labels: np.ndarray, image, missing: list[int], ignore_id: int, partial: dict[int, str]
                    ) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    from nnunet_ctorg.body import body_mask

    if not missing and not partial:
        return labels, {}
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    unlabelled = (labels == 0) & body_mask(hu)
    out = labels.copy()
    counts = {}
    if missing:
        out[unlabelled] = ignore_id
        counts["unannotated_organs"] = int(unlabelled.sum())
    else:
        spacing_zyx = tuple(float(v) for v in image.GetSpacing()[::-1])
        for organ in partial.values():
            could_be = bone_candidates(hu, spacing_zyx) if organ == "bone" else np.ones_like(unlabelled)
            chosen = unlabelled & could_be & (out == 0)
            out[chosen] = ignore_id
            counts[f"partial_{organ}"] = int(chosen.sum())
    return out, counts


# 'pseudo': merged as background into a staging folder, then completed by the teachers (completion.py)
UNANNOTATED_STRATEGIES = {"background": _keep_background, "ignore": _ignore_unknown, "pseudo": _keep_background}


def find_dataset(raw_dir: Path, dataset_id: int) -> Path:
    found = sorted(raw_dir.glob(f"Dataset{dataset_id:03d}_*"))
    if len(found) != 1:
        raise FileNotFoundError(f"no dataset with id {dataset_id} in {raw_dir}" if not found else
                                f"several datasets with id {dataset_id}: {[p.name for p in found]}")
    return found[0]


def merge_job(job: CaseJob, strategy: str, all_ids: list[int], ignore_id: int, names: dict[int, str]) -> None:
    import SimpleITK as sitk

    image_path, label_path = Path(job.inputs["image"]), Path(job.inputs["label"])
    record = dict(job.inputs["record"])
    missing = [i for i in all_ids if i not in record["annotated"]]
    partial = {i: names[i] for i in record.get("partial", []) if i in names}
    image = read_image(image_path, f"{job.case}: image")
    labels = sitk.GetArrayFromImage(read_image(label_path, f"{job.case}: label map"))
    labels, ignored = UNANNOTATED_STRATEGIES[strategy](labels, image, missing, ignore_id, partial)
    record.update({"merged_from": job.inputs["dataset"], "unannotated": strategy if missing else None})
    if ignored:
        record["ignored_voxels"] = ignored
    write_case(Path(job.inputs["out"]), job, image, labels, record, image_file=image_path)


def stratified_folds(cases: dict[str, dict], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """nnU-Net-style ``splits_final.json`` folds of the training ``cases`` (case -> record): each source's
    cases shuffled (fixed seed) and dealt over the folds, the cases of one ``fold_group`` together."""
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    by_source: dict[str, dict[str, list[str]]] = {}
    for case in sorted(cases):
        record = cases[case]
        unit = record.get("fold_group") or case
        by_source.setdefault(record.get("source", "unknown"), {}).setdefault(unit, []).append(case)
    start = 0
    for source in sorted(by_source):
        units = list(by_source[source].values())
        order = rng.permutation(len(units))
        for k, i in enumerate(order):
            folds[(start + k) % n_folds] += units[i]
        start += len(units)  # the next source starts where this one stopped: the folds stay balanced
    everything = {c for fold in folds for c in fold}
    return [{"train": sorted(everything - set(fold)), "val": sorted(fold)} for fold in folds]


def merge_datasets(dataset_ids: list[int], raw_dir: str | Path, dataset_id: int, name: str = "Merged",
                   unannotated: str = "ignore", num_processes: int = 1, strict: bool = False,
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

    jobs, seen = [], {}
    for ds in datasets:
        records_file = ds / "annotated_labels.json"
        if not records_file.is_file():
            raise FileNotFoundError(f"{ds.name} has no annotated_labels.json: convert it with nnunet-ctorg first")
        records = json.loads(records_file.read_text())
        for split in ("Tr", "Ts"):
            for label in sorted((ds / f"labels{split}").glob("*.nii.gz")) if (ds / f"labels{split}").is_dir() else []:
                case = label.name[:-7]
                if case in seen:
                    raise ValueError(f"case {case} is in both {seen[case]} and {ds.name}")
                if case not in records:
                    raise ValueError(f"{ds.name}: case {case} has no annotation record")
                seen[case] = ds.name
                jobs.append(CaseJob(case=case, split=split, inputs={
                    "image": str(ds / f"images{split}" / f"{case}_0000.nii.gz"), "label": str(label),
                    "record": records[case], "dataset": ds.name}))

    final = dataset_folder(raw_dir, dataset_id, name)
    out = raw_dir / f".{final.name}_merging" if unannotated == "pseudo" else final
    names = {v: k for k, v in labels.items()}
    work = partial(merge_job, strategy=unannotated, all_ids=all_ids, ignore_id=ignore_id, names=names)
    summary = run_conversion(jobs, work, out, num_processes, strict, f"merging ({unannotated})", progress)
    report(summary, out, progress)
    finish_dataset(out, scheme, f"merge of {', '.join(ds.name for ds in datasets)}; unannotated organs: "
                   f"{unannotated}", extra_labels={"ignore": ignore_id} if unannotated == "ignore" else None)
    done = set(summary["written"]) | set(summary["skipped"])
    training = {j.case: j.inputs["record"] for j in jobs if j.split == "Tr" and j.case in done}
    if os.environ.get("nnUNet_preprocessed") and len(training) >= 5:
        write_text_atomic(json.dumps(stratified_folds(training), indent=1),
                          Path(os.environ["nnUNet_preprocessed"]) / out.name / "splits_final.json")
    if unannotated == "pseudo":
        import shutil

        from nnunet_ctorg.dataset_conversion.completion import complete_folder

        complete_folder(out, final, teachers, progress=progress, **completion_options)
        shutil.rmtree(out)
        if os.environ.get("nnUNet_preprocessed"):
            shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / out.name, ignore_errors=True)
        return final
    return out
