"""Pseudo-label completion of a merged dataset (paper 001 strategy #1 -> #2, paper 004 baseline).

Every case of a merged dataset records which unified organs its source annotates. Teachers fill the
others: nnU-Net models (any trainer; their labels matched to the scheme by name) and the morphology
labelers (lungs, bone). Per case and voxel:

- real annotations always win: only voxels labelled background or ``ignore`` in the input, in a case
  that lacks organs, can change, and a teacher may only propose organs the case lacks;
- where teachers disagree, the proposal of the teacher with the higher priority for that organ wins;
  the priority is the teacher's validation Dice for the organ from nnU-Net's own validation summary
  (``fold_*/validation/summary.json``, mean over folds; paper 001's rule), for the morphology labelers
  their published Dice (paper 003 Table II: lungs 0.978, bone 0.932); overridable;
- with a confidence threshold, a winning proposal whose probability is below it becomes ``ignore``
  instead of a guess; unknown voxels no teacher claims become background, unless an organ the case
  lacks has no teacher at all (then they keep the input's value, e.g. ``ignore``).

Per-case provenance goes into the annotation records (``pseudo``: organ -> teacher, voxels, priority).
Running the command again on its own output with a new teacher (the student) is the noisy-student loop.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ctorg.dataset_conversion.common import (
    CaseJob,
    case_is_done,
    case_paths,
    dataset_folder,
    finish_dataset,
    write_case,
)
from nnunet_ctorg.dataset_conversion.merge import find_dataset
from nnunet_ctorg.io import read_image, read_json, write_text_atomic
from nnunet_ctorg.label_scheme import LabelScheme

MORPHOLOGY_TEACHERS = {"lungs": ("lungs", 0.978), "bones": ("bone", 0.932)}  # organ, paper 003 Table II Dice


@dataclass
class Teacher:
    """A source of pseudo labels: an nnU-Net model folder or a morphology labeler ("lungs", "bones").

    ``organs``: unified organ names it may fill (default: every organ it knows); ``priority``: organ ->
    value overriding the default (validation Dice).
    """

    name: str
    source: str
    organs: list[str] | None = None
    priority: dict[str, float] = field(default_factory=dict)
    folds: list[str] | None = None

    @property
    def is_morphology(self) -> bool:
        return self.source in MORPHOLOGY_TEACHERS


def parse_teacher(spec: str) -> Teacher:
    """``NAME=SOURCE[:organ,organ...]``; SOURCE an nnU-Net model folder, ``lungs`` or ``bones``."""
    if "=" not in spec:
        raise ValueError(f"teacher {spec!r}: expected NAME=MODEL_FOLDER[:organ,...] or NAME=lungs|bones")
    name, rest = spec.split("=", 1)
    source, _, organs = rest.partition(":") if not os.path.isdir(rest) else (rest, "", "")
    if not name or not source:
        raise ValueError(f"teacher {spec!r}: empty name or source")
    if source not in MORPHOLOGY_TEACHERS and not Path(source).is_dir():
        raise ValueError(f"teacher {name}: {source} is neither an nnU-Net model folder nor one of "
                         f"{sorted(MORPHOLOGY_TEACHERS)}")
    return Teacher(name, source, [o for o in organs.split(",") if o] or None)


def validation_dice(model_folder: Path, label_names: dict[int, str]) -> dict[str, float]:
    """Organ name -> mean validation Dice over the folds that have nnU-Net's validation summary."""
    values: dict[str, list[float]] = {}
    for summary in sorted(model_folder.glob("fold_*/validation/summary.json")):
        per_class = read_json(summary, "validation summary").get("mean", {})
        for key, metrics in per_class.items():
            name = label_names.get(int(key)) if key.isdigit() else None  # region keys "(1, 2)" are skipped
            if name is not None and metrics.get("Dice") is not None and np.isfinite(metrics["Dice"]):
                values.setdefault(name, []).append(float(metrics["Dice"]))
    return {k: float(np.mean(v)) for k, v in values.items()}


class LoadedTeacher:
    """A teacher ready to propose labels: its organs (unified ids), priorities and a predict function."""

    def __init__(self, teacher: Teacher, scheme: LabelScheme, device: str = "cpu", use_mirroring: bool = True):
        self.teacher, self.name = teacher, teacher.name
        names_to_ids = {k: v for k, v in scheme.labels.items() if v}
        if teacher.is_morphology:
            organ, dice = MORPHOLOGY_TEACHERS[teacher.source]
            if organ not in names_to_ids:
                raise ValueError(f"teacher {teacher.name}: the scheme has no organ {organ!r}")
            self.class_to_organ = {1: names_to_ids[organ]}
            default_priority = {organ: dice}
            self.predictor = None
        else:
            from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
            from nnunet_ctorg.inference.folder_prediction import load_predictor

            folder = Path(teacher.source)
            own = read_json(folder / "dataset.json", f"teacher {teacher.name} dataset.json")["labels"]
            own_names = {int(v): k for k, v in own.items() if k not in ("background", "ignore")}
            self.class_to_organ = {c: names_to_ids[n] for c, n in own_names.items() if n in names_to_ids}
            if not self.class_to_organ:
                raise ValueError(f"teacher {teacher.name}: none of its labels {sorted(own_names.values())} is an "
                                 f"organ of the scheme {sorted(names_to_ids)}")
            default_priority = validation_dice(folder, own_names)
            self.predictor = ChunkedPredictor(load_predictor(folder, teacher.folds, device=device,
                                                             use_mirroring=use_mirroring), ChunkSettings(chunk_mm=None))
        if teacher.organs is not None:
            unknown = [o for o in teacher.organs if o not in names_to_ids]
            if unknown:
                raise ValueError(f"teacher {teacher.name}: unknown organ(s) {unknown}; the scheme has "
                                 f"{sorted(names_to_ids)}")
            allowed = {names_to_ids[o] for o in teacher.organs}
            self.class_to_organ = {c: o for c, o in self.class_to_organ.items() if o in allowed}
        ids_to_names = {v: k for k, v in names_to_ids.items()}
        self.priority = {o: float(teacher.priority.get(ids_to_names[o], default_priority.get(ids_to_names[o], 0.0)))
                         for o in self.class_to_organ.values()}

    @property
    def organs(self) -> set[int]:
        return set(self.class_to_organ.values())

    def propose(self, image, case: str) -> tuple[np.ndarray, np.ndarray]:
        """(unified organ id or 0, probability of the teacher's winning class) per voxel of ``case``."""
        import SimpleITK as sitk

        hu = sitk.GetArrayViewFromImage(image)  # no copy: every teacher of a case reads the same image
        spacing = image.GetSpacing()[::-1]
        if self.predictor is None:
            from nnunet_ctorg.labelers import label_bones, label_lungs

            labeler = label_lungs if self.teacher.source == "lungs" else label_bones
            mask = labeler(hu, spacing, mode="improved") > 0
            certain = np.broadcast_to(np.float32(1.0), hu.shape)  # a labeler has no probability: always sure
            return np.where(mask, self.class_to_organ[1], 0).astype(np.uint8), certain
        # streamed over classes: running max logit, its class and the log-sum-exp give the winner's probability
        best = best_class = total = None
        for c, logits in enumerate(self.predictor.chunk_logits(hu, spacing)):
            logits = logits.astype(np.float32)
            if best is None:
                best, best_class, total = logits.copy(), np.zeros(logits.shape, np.uint8), logits.copy()
                continue
            better = logits > best
            best_class[better] = c
            np.maximum(best, logits, out=best)
            total = np.logaddexp(total, logits)
        probability = np.exp(best - total)
        organs = np.zeros(best_class.shape, np.uint8)
        for c, organ in self.class_to_organ.items():
            organs[best_class == c] = organ
        return organs, probability


def complete_labels(labels: np.ndarray, missing: set[int], ignore_id: int | None, proposals: list[tuple],
                    confidence: float | None, new_ignore_id: int, known_slices: dict | None = None
                    ) -> tuple[np.ndarray, dict]:
    """Fill the unknown voxels of ``labels`` from teacher proposals.

    ``proposals``: (teacher name, organ ids -> priority, organ map, probability map). Unknown voxels are
    background or ``ignore_id`` voxels; those no teacher claims become background when every missing organ
    has a teacher, else they keep their input value. ``known_slices`` (the record's ``annotated_slices``:
    organ id -> axis and slice range annotated by another copy of the scan): no teacher proposes that organ
    there. Returns the labels and per-organ provenance.
    """
    unknown = labels == 0
    if ignore_id is not None:
        unknown |= labels == ignore_id
    out = labels.copy()
    covered = set().union(*(set(priorities) for _, priorities, _, _ in proposals)) & missing
    if covered == missing:  # every missing organ has a teacher: what no teacher claims is background
        out[unknown] = 0
    # else unclaimed unknown voxels keep what the input says (ignore stays ignore: an organ is still unknown)
    best_priority = np.full(labels.shape, -np.inf, np.float32)
    winner_probability = np.ones(labels.shape, np.float32)
    winner = np.full(labels.shape, -1, np.int16)
    known_slices = known_slices or {}
    for index, (_, priorities, organs, probability) in enumerate(proposals):
        for organ, priority in priorities.items():
            if organ not in missing:
                continue
            claim = unknown & (organs == organ) & (priority > best_priority)
            if str(organ) in known_slices:  # annotated there by a copy of the scan: its background is real
                axis, (lo, hi) = known_slices[str(organ)]["axis"], known_slices[str(organ)]["range"]
                claim[(slice(None),) * axis + (slice(lo, hi),)] = False
            out[claim] = organ
            best_priority[claim] = priority
            winner_probability[claim] = probability[claim]
            winner[claim] = index
    provenance = {}
    for organ in sorted(missing):
        won = out == organ
        for index, (name, priorities, _, _) in enumerate(proposals):
            n = int(np.count_nonzero(won & (winner == index)))
            if n:
                provenance.setdefault(str(organ), []).append({"teacher": name, "voxels": n,
                                                              "priority": priorities[organ]})
    if confidence is not None:
        doubtful = (winner >= 0) & (winner_probability < confidence)
        out[doubtful] = new_ignore_id
        provenance["ignored_low_confidence_voxels"] = int(np.count_nonzero(doubtful))
    return out, provenance


def complete_dataset(dataset_id: int, raw_dir: str | Path, out_id: int, teachers: list[Teacher],
                     name: str = "Completed", **options) -> Path:
    """Write ``raw_dir/DatasetXXX_name``: the dataset ``dataset_id`` with its missing organs completed.

    ``options``: those of :func:`complete_folder`.
    """
    if out_id == dataset_id:
        raise ValueError(f"output id {out_id} is the input dataset")
    raw_dir = Path(raw_dir)
    return complete_folder(find_dataset(raw_dir, dataset_id), dataset_folder(raw_dir, out_id, name), teachers,
                           **options)


def complete_folder(source: Path, out: Path, teachers: list[Teacher], confidence: float | None = None,
                    device: str = "cpu", use_mirroring: bool = True, num_parts: int = 1, part_id: int = 0,
                    resume: bool = True, progress: bool = True) -> Path:
    """Complete the nnU-Net dataset folder ``source`` into ``out`` (see the module docstring).

    Args:
        confidence: winning proposals with a lower teacher probability become ``ignore`` (None: off).
        num_parts, part_id: process every ``num_parts``-th case starting at ``part_id`` (sharding).
        resume: skip cases already complete in ``out``.
    """
    from tqdm import tqdm

    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"need 0 <= part_id < num_parts, got part_id {part_id}, num_parts {num_parts}")
    if confidence is not None and not 0.0 < confidence <= 1.0:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    if not teachers:
        raise ValueError("no teacher given")
    dataset_json = read_json(source / "dataset.json", f"{source.name} dataset.json")
    records = read_json(source / "annotated_labels.json", f"{source.name} annotated_labels.json (convert and merge "
                        f"with nnunet-ctorg first)")
    labels_in = {k: int(v) for k, v in dataset_json["labels"].items()}
    ignore_id = labels_in.pop("ignore", None)
    scheme = LabelScheme(labels=labels_in, sources={})
    organ_ids = {v for v in labels_in.values() if v}
    new_ignore_id = max(organ_ids) + 1
    # Teacher specs are loaded here; ready objects (name, priority: organ id -> value, propose(image, case)) are
    # used as they are (custom or oracle teachers from Python)
    loaded = [LoadedTeacher(t, scheme, device, use_mirroring) if isinstance(t, Teacher) else t for t in teachers]

    jobs = []
    for split in ("Tr", "Ts"):
        folder = source / f"labels{split}"
        for label in sorted(folder.glob("*.nii.gz")) if folder.is_dir() else []:
            case = label.name[:-7]
            if case not in records:
                raise ValueError(f"{source.name}: case {case} has no annotation record")
            jobs.append(CaseJob(case, split, {"image": source / f"images{split}" / f"{case}_0000.nii.gz",
                                              "label": label, "record": records[case], "out": str(out)}))
    summary = {"written": [], "skipped": [], "failed": {}}
    for job in tqdm(jobs[part_id::num_parts], desc="completing", unit="case", disable=not progress):
        if resume and case_is_done(out, job):
            summary["skipped"].append(job.case)
            continue
        try:
            complete_case(job, loaded, organ_ids, ignore_id, confidence, new_ignore_id, out)
            summary["written"].append(job.case)
        except (ValueError, FileNotFoundError) as e:
            for path in case_paths(out, job):  # no partial case stays behind
                path.unlink(missing_ok=True)
            summary["failed"][job.case] = str(e)
            print(f"skipped {job.case}: {e}", file=sys.stderr)
    extra = {"ignore": new_ignore_id} if confidence is not None or ignore_id is not None else None
    finish_dataset(out, scheme, f"{source.name} completed with pseudo labels by "
                   f"{', '.join(t.name for t in teachers)}", extra_labels=extra)
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if preprocessed and (Path(preprocessed) / source.name / "splits_final.json").is_file():
        write_text_atomic((Path(preprocessed) / source.name / "splits_final.json").read_text(),
                          Path(preprocessed) / out.name / "splits_final.json")
    write_text_atomic(json.dumps(summary, indent=1), out / f"completion_summary_part{part_id}of{num_parts}.json")
    if progress:
        print(f"{len(summary['written'])} case(s) completed, {len(summary['skipped'])} already there, "
              f"{len(summary['failed'])} failed -> {out}")
    return out


def complete_case(job: CaseJob, teachers: list, organ_ids: set[int], ignore_id: int | None,
                  confidence: float | None, new_ignore_id: int, out: Path) -> None:
    import SimpleITK as sitk

    record = dict(job.inputs["record"])
    if ignore_id is not None and ignore_id != new_ignore_id:
        raise ValueError(f"{job.case}: the input's ignore label {ignore_id} is not the highest id + 1")
    image = read_image(job.inputs["image"], f"{job.case}: image")
    labels = sitk.GetArrayFromImage(read_image(job.inputs["label"], f"{job.case}: label map"))
    allowed = organ_ids | {0} | ({ignore_id} if ignore_id is not None else set())
    unexpected = sorted(set(np.unique(labels).tolist()) - allowed)
    if unexpected:
        raise ValueError(f"{job.case}: label values {unexpected} are not in the dataset's labels")
    missing = organ_ids - set(record.get("annotated", []))
    if missing:
        proposals = []
        for teacher in teachers:
            wanted = {o: p for o, p in teacher.priority.items() if o in missing}
            if wanted:
                organs, probability = teacher.propose(image, job.case)
                proposals.append((teacher.name, wanted, organs, probability))
        labels, provenance = complete_labels(labels, missing, ignore_id, proposals, confidence, new_ignore_id,
                                             record.get("annotated_slices"))
        record["pseudo"] = provenance
        record["teachers"] = [t.name for t in teachers]
        covered = set().union(*(set(t.priority) for t in teachers)) & missing
        record["still_unannotated"] = sorted(missing - covered)
        record["unannotated"] = "pseudo"
    write_case(out, job, image, labels, record, image_file=Path(job.inputs["image"]))
