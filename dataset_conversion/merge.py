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

The same scan in several inputs (``duplicates.py``: fingerprints, confirmed on the voxels) is handled by
``duplicates``: ``union`` (default) keeps one case, the copy with the most voxels, with the union of the
copies' annotations mapped onto its grid (an organ that both annotate comes from the source first in
``duplicate_priority``; the Dice of the two is recorded; an organ annotated only by a copy that holds fewer
slices counts as annotated on those slices only, ``annotated_slices``); ``same_fold`` keeps every copy, in
one fold; ``drop`` keeps the copy with the most voxels only. Copies whose shared organ disagrees (Dice below
``MIN_SHARED_DICE``) are not merged: they stay apart, in one fold, and are flagged with both names.

Splits: five folds stratified by source (each source's training cases are dealt over the folds,
so every source appears in every validation set); cases of one ``fold_group`` (the known-bad
table's groups, copies of one scan) stay in one fold, across sources too; test cases (imagesTs, e.g.
TotalSegmentator's official test split) are never in a fold. Written to
``$nnUNet_preprocessed/<dataset>/splits_final.json``.
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
from nnunet_ctorg.label_scheme import SOURCES, LabelScheme


def _keep_background(labels: np.ndarray, image, missing: list[int], ignore_id: int, partial: dict[int, str],
                     known_slices: dict | None = None) -> tuple[np.ndarray, dict]:
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


def _ignore_unknown(labels: np.ndarray, image, missing: list[int], ignore_id: int, partial: dict[int, str],
                    known_slices: dict | None = None) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    from nnunet_ctorg.body import body_mask

    if not missing and not partial:
        return labels, {}
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    unlabelled = (labels == 0) & body_mask(hu, spacing=image.GetSpacing()[::-1])
    known_slices = known_slices or {}
    if missing and all(str(i) in known_slices for i in missing):
        # every missing organ is annotated on a slab (by a cropped copy of the scan): unknown only outside
        # the slabs' intersection
        known = np.ones_like(unlabelled)
        for i in missing:
            axis, (lo, hi) = known_slices[str(i)]["axis"], known_slices[str(i)]["range"]
            outside = np.ones(labels.shape[axis], dtype=bool)
            outside[lo:hi] = False
            known[(slice(None),) * axis + (outside,)] = False
        unlabelled &= ~known
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


def merge_job(job: CaseJob, strategy: str, all_ids: list[int], ignore_id: int, names: dict[int, str],
              priority: tuple[str, ...] = ()) -> None:
    import SimpleITK as sitk

    from nnunet_ctorg.dataset_conversion.duplicates import GridMapping

    image_path, label_path = Path(job.inputs["image"]), Path(job.inputs["label"])
    record = dict(job.inputs["record"])
    image = read_image(image_path, f"{job.case}: image")
    labels = sitk.GetArrayFromImage(read_image(label_path, f"{job.case}: label map"))
    for copy in job.inputs.get("duplicates", []):
        other = sitk.GetArrayFromImage(read_image(copy["label"], f"{copy['case']}: label map"))
        region, on_grid = GridMapping.from_json(copy["mapping"]).b_on_a(other, labels.shape)
        labels, record = union_labels(labels, record, on_grid, region, copy, priority)
    missing = [i for i in all_ids if i not in record["annotated"]]
    partial = {i: names[i] for i in record.get("partial", []) if i in names}
    labels, ignored = UNANNOTATED_STRATEGIES[strategy](labels, image, missing, ignore_id, partial,
                                                       record.get("annotated_slices"))
    record.update({"merged_from": job.inputs["dataset"], "unannotated": strategy if missing else None})
    if ignored:
        record["ignored_voxels"] = ignored
    write_case(Path(job.inputs["out"]), job, image, labels, record, image_file=image_path)


# ---------------------------------------------------------------------------------------------------------
# The same scan in several inputs

DUPLICATE_ACTIONS = ("union", "same_fold", "drop")
# The order in which sources win an organ that two copies of a scan both annotate: the default scheme's
# order of sources (CT-ORG first: its test cases were corrected by a radiologist, paper 000).
DUPLICATE_PRIORITY = ("ctorg", "abdomenct1k", "totalseg")
MIN_SHARED_DICE = 0.8  # two copies whose shared organ agrees less are flagged, not merged


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def shared_organ_dice(labels: np.ndarray, record: dict, on_grid: np.ndarray, region: tuple[slice, ...],
                      other_record: dict) -> dict[str, float | None]:
    """Dice of each organ both copies annotate, over the voxels both hold (``None``: in neither)."""
    here = labels[region]
    return {str(o): _dice(here == o, on_grid == o)
            for o in sorted(set(record["annotated"]) & set(other_record["annotated"]))}


def union_labels(labels: np.ndarray, record: dict, on_grid: np.ndarray, region: tuple[slice, ...],
                 copy: dict, priority: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    """The labels and record of a case with the annotations of another copy of its scan added.

    ``on_grid``: the copy's labels on ``region`` of this case's grid; ``copy``: its case name, dataset and
    record. An organ only the copy annotates is added where this case has background (a voxel another organ
    holds keeps it; counted); an organ both annotate comes from the source first in ``priority`` (this
    case's on a tie). Where the copy holds fewer slices, organs only it annotates count as annotated on its
    slices only (``annotated_slices``), not in ``annotated``.
    """
    other = copy["record"]
    rank = {source: k for k, source in enumerate(priority)}
    copy_wins = rank.get(other.get("source"), len(rank)) < rank.get(record.get("source"), len(rank))
    mine, theirs = set(record["annotated"]), set(other["annotated"])
    shared = sorted(mine & theirs)
    dice = shared_organ_dice(labels, record, on_grid, region, other)
    out = labels.copy()
    view = out[region]  # a view: writing it writes ``out``
    taken = sorted(theirs - mine) + (shared if copy_wins else [])
    for organ in shared if copy_wins else []:
        view[view == organ] = 0
    conflicting = 0
    for organ in taken:
        voxels = on_grid == organ
        free = voxels & (view == 0)
        view[free] = organ
        conflicting += int(np.count_nonzero(voxels & ~free & (view != organ)))
    whole = all(r.start == 0 and r.stop == n for r, n in zip(region, labels.shape))
    merged = dict(record)
    added = sorted(theirs - mine)
    if whole:
        merged["annotated"] = sorted(mine | theirs)
    else:
        axis = next(k for k, (r, n) in enumerate(zip(region, labels.shape)) if (r.start, r.stop) != (0, n))
        merged["annotated_slices"] = {**record.get("annotated_slices", {}),
                                      **{str(o): {"axis": axis, "range": [region[axis].start, region[axis].stop]}
                                         for o in added}}
    annotated = set(merged["annotated"])
    partial_mine, partial_theirs = set(record.get("partial", [])), set(other.get("partial", []))
    merged["partial"] = sorted(o for o in annotated if (o not in mine or o in partial_mine)
                               and (o not in theirs or o in partial_theirs))
    merged.setdefault("duplicates", []).append({
        "case": copy["case"], "dataset": copy["dataset"], "source": other.get("source"),
        "mapping": copy["mapping"], "dice": dice, "organs_from_copy": taken,
        "shared_organs_from": other.get("source") if copy_wins else record.get("source"),
        "conflicting_voxels": conflicting, "covers_whole_grid": whole})
    return out, merged


def plan_duplicates(jobs: list[CaseJob], action: str, progress: bool = False) -> tuple[list[CaseJob], dict]:
    """Find the copies of one scan among ``jobs`` and apply ``action``; returns the jobs left and the
    duplicates' summary. Of each group of copies one is kept (a test case if there is one, else the copy
    with the most voxels); with ``union`` the others are merged into it when their shared organs agree."""
    from nnunet_ctorg.dataset_conversion.duplicates import (
        ConvertedCase,
        case_fingerprint,
        describe,
        documented_groups,
        duplicate_report,
        find_duplicates,
        read_array,
    )

    if action not in DUPLICATE_ACTIONS:
        raise ValueError(f"duplicates must be one of {DUPLICATE_ACTIONS}, got {action!r}")
    refs = {j.case: ConvertedCase(Path(j.inputs["image"]).parents[1], j.case, j.split) for j in jobs}
    case_of = {r.key: case for case, r in refs.items()}
    confirmed, rejected = find_duplicates(list(refs.values()), progress)
    mapping, parent = {}, {c: c for c in refs}

    def root(c: str) -> str:
        while parent[c] != c:
            c = parent[c]
        return c

    for d in confirmed:
        a, b = case_of[d.case_a], case_of[d.case_b]
        mapping[(a, b)], mapping[(b, a)] = d.mapping, d.mapping.inverse()
        parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for c in refs:
        groups.setdefault(root(c), []).append(c)
    by_case, order = {j.case: j for j in jobs}, {j.case: k for k, j in enumerate(jobs)}
    documented = duplicate_report(confirmed, rejected, documented_groups(list(refs.values())))["documented_groups"]
    summary = {"action": action, "pairs": [describe(d) for d in confirmed], "merged": {}, "dropped": {},
               "same_fold": {}, "flagged": [], "unconfirmed_candidates": len(rejected), "documented": documented}
    removed = set()
    for group in (g for g in groups.values() if len(g) > 1):
        size = {c: int(np.prod(case_fingerprint(refs[c].dataset, c, refs[c].image).shape)) for c in group}
        keep = max(group, key=lambda c: (refs[c].split == "Ts", size[c], -order[c]))
        together = []
        for c in sorted(group, key=order.get):
            if c == keep:
                continue
            if action == "drop":
                removed.add(c)
                summary["dropped"][c] = keep
                continue
            if action == "same_fold" or (keep, c) not in mapping:
                together.append(c)
                continue
            labels = read_array(refs[keep].label, f"{keep}: label map")
            region, on_grid = mapping[(keep, c)].b_on_a(read_array(refs[c].label, f"{c}: label map"), labels.shape)
            dice = shared_organ_dice(labels, by_case[keep].inputs["record"], on_grid, region,
                                     by_case[c].inputs["record"])
            low = {o: round(v, 4) for o, v in dice.items() if v is not None and v < MIN_SHARED_DICE}
            if low:
                summary["flagged"].append(f"{keep} and {c} are one scan but disagree (Dice per organ id {low} < "
                                          f"{MIN_SHARED_DICE}): not merged, kept in one fold")
                together.append(c)
                continue
            by_case[keep].inputs.setdefault("duplicates", []).append({
                "case": c, "dataset": by_case[c].inputs["dataset"], "label": str(refs[c].label),
                "record": by_case[c].inputs["record"], "mapping": mapping[(keep, c)].to_json()})
            removed.add(c)
            summary["merged"].setdefault(keep, []).append(c)
        if together:
            group_name = f"same scan as {keep}"
            for c in [keep, *together]:
                by_case[c].inputs["record"] = {**by_case[c].inputs["record"], "fold_group": group_name}
            summary["same_fold"][keep] = together
    return [j for j in jobs if j.case not in removed], summary


def stratified_folds(cases: dict[str, dict], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """nnU-Net-style ``splits_final.json`` folds of the training ``cases`` (case -> record): each source's
    cases shuffled (fixed seed) and dealt over the folds, the cases of one ``fold_group`` together."""
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    units: dict[str, list[str]] = {}
    for case in sorted(cases):
        units.setdefault(cases[case].get("fold_group") or case, []).append(case)
    by_source: dict[str, list[list[str]]] = {}
    for unit in units.values():  # a group is dealt with the source of its first case (copies of one scan)
        by_source.setdefault(cases[unit[0]].get("source", "unknown"), []).append(unit)
    start = 0
    for source in sorted(by_source):
        units_of_source = by_source[source]
        order = rng.permutation(len(units_of_source))
        for k, i in enumerate(order):
            folds[(start + k) % n_folds] += units_of_source[i]
        start += len(units_of_source)  # the next source starts where this one stopped: the folds stay balanced
    everything = {c for fold in folds for c in fold}
    return [{"train": sorted(everything - set(fold)), "val": sorted(fold)} for fold in folds]


def duplicates_line(summary: dict) -> str:
    """The merge report's line on the copies of one scan."""
    merged = sum(len(v) for v in summary["merged"].values())
    together = sum(len(v) for v in summary["same_fold"].values())
    return (f"duplicates ({summary['action']}): {len(summary['pairs'])} pair(s) of one scan; {merged} copy(ies) "
            f"merged into {len(summary['merged'])} case(s), {len(summary['dropped'])} dropped, {together} kept "
            f"in the fold of their copy, {len(summary['flagged'])} flagged")


def merge_datasets(dataset_ids: list[int], raw_dir: str | Path, dataset_id: int, name: str = "Merged",
                   unannotated: str = "ignore", num_processes: int = 1, strict: bool = False,
                   progress: bool = False, teachers: list | None = None, duplicates: str = "union",
                   duplicate_priority: tuple[str, ...] = DUPLICATE_PRIORITY, **completion_options) -> Path:
    """Merge the datasets ``dataset_ids`` of ``raw_dir`` into ``raw_dir/DatasetXXX_name``.

    ``duplicates``: what becomes of the copies of one scan (``DUPLICATE_ACTIONS``, see the module docstring);
    ``duplicate_priority``: which source wins an organ two copies both annotate. With
    ``unannotated="pseudo"``, ``teachers`` (``completion.Teacher``) fill the missing organs;
    ``completion_options`` go to ``completion.complete_folder`` (confidence, device, ...).
    """
    if unannotated not in UNANNOTATED_STRATEGIES:
        raise ValueError(f"unannotated must be one of {sorted(UNANNOTATED_STRATEGIES)}, got {unannotated!r}")
    if (unannotated == "pseudo") != bool(teachers):
        raise ValueError("the 'pseudo' strategy needs teachers (--teacher), and teachers need 'pseudo'")
    if dataset_id in dataset_ids:
        raise ValueError(f"output id {dataset_id} is one of the inputs")
    if duplicates not in DUPLICATE_ACTIONS:
        raise ValueError(f"duplicates must be one of {DUPLICATE_ACTIONS}, got {duplicates!r}")
    unknown = [s for s in duplicate_priority if s not in SOURCES]
    if unknown:
        raise ValueError(f"duplicate_priority names unknown source(s) {unknown}; known: {', '.join(SOURCES)}")
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

    jobs, duplicate_summary = plan_duplicates(jobs, duplicates, progress)
    final = dataset_folder(raw_dir, dataset_id, name)
    out = raw_dir / f".{final.name}_merging" if unannotated == "pseudo" else final
    names = {v: k for k, v in labels.items()}
    work = partial(merge_job, strategy=unannotated, all_ids=all_ids, ignore_id=ignore_id, names=names,
                   priority=tuple(duplicate_priority))
    summary = run_conversion(jobs, work, out, num_processes, strict, f"merging ({unannotated})", progress)
    summary["duplicates"] = duplicate_summary
    report(summary, out, progress)
    if progress:
        print(duplicates_line(duplicate_summary))
        for line in duplicate_summary["flagged"]:
            print(f"  flagged: {line}")
        for group in duplicate_summary["documented"]:
            print(f"  documented duplicate {group['group']} ({group['reference']}): "
                  f"{'found' if group['found'] else 'NOT found by the fingerprints'}")
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
