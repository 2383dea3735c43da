"""Pseudo-label completion: rules, oracle and morphology teachers, provenance, sharding, resume, a real teacher."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.common import CaseJob, finish_dataset, write_case
from nnunet_ctorg.dataset_conversion.completion import Teacher, complete_dataset, complete_labels, parse_teacher
from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import DEFAULT_LABELS
from nnunet_ctorg.phantoms.cli import generate_dataset
from tests.conftest import nnunet_command

L = DEFAULT_LABELS
HIDDEN = {0: ["spleen", "pancreas"], 1: ["lungs", "bone"], 2: ["liver"]}


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def labels_of(folder, case):
    """The label map of ``case`` in a dataset folder, training or test split."""
    found = [p for split in ("Tr", "Ts") for p in [folder / f"labels{split}" / f"{case}.nii.gz"] if p.is_file()]
    return read(found[0])


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture()
def hidden(tmp_path, nnunet_env):
    """TotalSegmentator phantoms with every organ (the truth) and a copy in which some organs are unannotated."""
    raw = nnunet_env / "nnUNet_raw"
    generate_dataset("totalseg", str(tmp_path / "ts"), 3, "thorax_abdomen", (6.0, 6.0, 6.0), seed=5, progress=False)
    truth = convert_totalseg_dataset(tmp_path / "ts", raw, 51)
    records = json.loads((truth / "annotated_labels.json").read_text())
    out = raw / "Dataset052_Hidden"
    for i, case in enumerate(sorted(records)):
        split = "Tr" if (truth / "labelsTr" / f"{case}.nii.gz").is_file() else "Ts"
        image = sitk.ReadImage(str(truth / f"images{split}" / f"{case}_0000.nii.gz"))
        labels = read(truth / f"labels{split}" / f"{case}.nii.gz")
        hidden_ids = [L[o] for o in HIDDEN[i]]
        labels[np.isin(labels, hidden_ids)] = 0
        record = {**records[case], "annotated": [a for a in records[case]["annotated"] if a not in hidden_ids]}
        record.pop("case")
        write_case(out, CaseJob(case, split), image, labels, record,
                   image_file=truth / f"images{split}" / f"{case}_0000.nii.gz")
    finish_dataset(out, LabelScheme(labels=dict(L), sources={}), "hidden organs")
    return raw, truth, out


class Oracle:
    """A teacher that proposes the truth (probability ``probability``) for ``organs``."""

    def __init__(self, name, truth, organs, priority=0.9, probability=1.0):
        self.name, self.truth = name, truth
        self.priority = {L[o]: priority for o in organs}
        self.probability = probability

    def propose(self, image, case):
        labels = labels_of(self.truth, case)
        organs = np.where(np.isin(labels, list(self.priority)), labels, 0).astype(np.uint8)
        return organs, np.full(labels.shape, self.probability, np.float32)


def test_rules_real_labels_win_priority_decides_confidence_ignores():
    labels = np.array([[1, 0, 0, 0, 9, 0]])  # 1 annotated organ, 9 = ignore of the input
    a = np.array([[7, 7, 7, 0, 7, 2]], np.uint8)  # teacher A proposes 7 (missing) and 2 (missing)
    b = np.array([[8, 8, 0, 8, 0, 0]], np.uint8)  # teacher B proposes 8
    pa, pb = np.array([[1, 1, 0.3, 1, 1, 1]], np.float32), np.ones((1, 6), np.float32)
    out, prov = complete_labels(labels, {2, 7, 8}, 9, [("A", {7: 0.9, 2: 0.5}, a, pa), ("B", {8: 0.95}, b, pb)],
                                None, 9)
    assert out.tolist() == [[1, 8, 7, 8, 7, 2]]  # real label kept, B beats A where both claim, ignore resolved
    assert prov["7"] == [{"teacher": "A", "voxels": 2, "priority": 0.9}]
    out, prov = complete_labels(labels, {2, 7, 8}, 9, [("A", {7: 0.9, 2: 0.5}, a, pa)], 0.5, 9)
    assert out.tolist() == [[1, 7, 9, 0, 7, 2]]  # the 0.3-probability proposal becomes ignore
    assert prov["ignored_low_confidence_voxels"] == 1
    out, _ = complete_labels(labels, {7}, 9, [("A", {7: 0.9, 2: 0.5}, a, pa)], None, 9)
    assert 2 not in out  # a teacher may not propose an organ the case has annotated
    out, _ = complete_labels(labels, {7, 8}, 9, [("A", {7: 0.9}, a, pa)], None, 9)
    assert out.tolist() == [[1, 7, 7, 0, 7, 0]]  # organ 8 has no teacher: unclaimed voxels keep the input's value
    out, _ = complete_labels(labels, {7, 8}, 9, [("A", {7: 0.9}, a * 0, pa)], None, 9)
    assert out.tolist() == labels.tolist()
    # organ 7 annotated on voxels 1-2 by a copy of the scan (merge --duplicates union): its background is real there
    out, _ = complete_labels(labels, {7}, 9, [("A", {7: 0.9}, a, pa)], None, 9, {"7": {"axis": 1, "range": [1, 3]}})
    assert out.tolist() == [[1, 0, 0, 0, 7, 0]]


def test_oracle_teachers_recover_the_hidden_organs_and_never_touch_real_labels(hidden):
    raw, truth, _ = hidden
    out = complete_dataset(52, raw, 53, [Oracle("oracle", truth, list(L)[1:])], "Done", progress=False)
    records = json.loads((out / "annotated_labels.json").read_text())
    for i, case in enumerate(sorted(records)):
        completed, reference = labels_of(out, case), labels_of(truth, case)
        given = labels_of(raw / "Dataset052_Hidden", case)
        assert np.array_equal(completed[given > 0], given[given > 0])  # real annotations kept
        for organ in HIDDEN[i]:
            if (reference == L[organ]).any():
                assert dice(completed == L[organ], reference == L[organ]) == 1.0
                assert records[case]["pseudo"][str(L[organ])][0]["teacher"] == "oracle"
        assert records[case]["teachers"] == ["oracle"]
    assert "ignore" not in json.loads((out / "dataset.json").read_text())["labels"]


def test_morphology_teachers_fill_lungs_and_bone(hidden):
    raw, truth, _ = hidden
    out = complete_dataset(52, raw, 54, [parse_teacher("lung_morph=lungs"), parse_teacher("bone_morph=bones")],
                           "Morph", progress=False)
    case = sorted(json.loads((out / "annotated_labels.json").read_text()))[1]  # lungs and bone hidden here
    completed, reference = labels_of(out, case), labels_of(truth, case)
    # thresholds: the labelers on 6 mm phantoms (tests/test_labelers.py measures them) - lungs are easy, bone
    # at 6 mm loses thin ribs
    assert dice(completed == L["lungs"], reference == L["lungs"]) > 0.85
    assert dice(completed == L["bone"], reference == L["bone"]) > 0.6
    record = json.loads((out / "annotations" / f"{case}.json").read_text())
    assert record["pseudo"][str(L["lungs"])][0] == {"teacher": "lung_morph", "voxels": int(
        (completed == L["lungs"]).sum()), "priority": 0.978}


def test_confidence_threshold_writes_the_ignore_label(hidden):
    raw, truth, _ = hidden
    out = complete_dataset(52, raw, 55, [Oracle("unsure", truth, ["spleen"], probability=0.4)], "Unsure",
                           confidence=0.5, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == max(L.values()) + 1
    case = sorted(json.loads((out / "annotated_labels.json").read_text()))[0]
    completed, reference = labels_of(out, case), labels_of(truth, case)
    assert np.array_equal(completed == meta["labels"]["ignore"], reference == L["spleen"])


def test_two_shards_give_the_same_dataset_as_one_run_and_an_interrupted_run_resumes(hidden):
    raw, truth, _ = hidden
    teacher = [Oracle("oracle", truth, list(L)[1:])]
    whole = complete_dataset(52, raw, 56, teacher, "Whole", progress=False)
    for part in (0, 1):
        sharded = complete_dataset(52, raw, 57, teacher, "Sharded", num_parts=2, part_id=part, progress=False)
    for case in json.loads((whole / "annotated_labels.json").read_text()):
        assert np.array_equal(labels_of(whole, case), labels_of(sharded, case))
    assert json.loads((whole / "annotated_labels.json").read_text()) == \
        json.loads((sharded / "annotated_labels.json").read_text())

    victim = sorted((sharded / "labelsTr").glob("*.nii.gz"))[0]
    victim.unlink()  # as if the run had died while writing this case
    complete_dataset(52, raw, 57, teacher, "Sharded", progress=False)
    summary = json.loads((sharded / "completion_summary_part0of1.json").read_text())
    assert summary["written"] == [victim.name[:-7]] and len(summary["skipped"]) == 2
    assert np.array_equal(read(victim), read(whole / "labelsTr" / victim.name))


def test_bad_teachers_and_arguments_are_refused(hidden, tmp_path):
    raw, truth, _ = hidden
    with pytest.raises(ValueError, match="neither an nnU-Net model folder"):
        parse_teacher(f"x={tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="NAME=MODEL_FOLDER"):
        parse_teacher("lungs")
    with pytest.raises(ValueError, match="unknown organ"):
        complete_dataset(52, raw, 58, [Teacher("m", "lungs", organs=["lung"])], progress=False)
    with pytest.raises(ValueError, match="part_id"):
        complete_dataset(52, raw, 58, [Teacher("m", "lungs")], num_parts=2, part_id=2, progress=False)
    with pytest.raises(ValueError, match="is the input"):
        complete_dataset(52, raw, 52, [Teacher("m", "lungs")], progress=False)


def test_merge_pseudo_strategy_completes_with_teachers(tmp_path, nnunet_env):
    from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
    from nnunet_ctorg.dataset_conversion.merge import merge_datasets

    raw = nnunet_env / "nnUNet_raw"
    generate_dataset("abdomenct1k", str(tmp_path / "ab"), 2, "thorax_abdomen", (6.0, 6.0, 6.0), seed=3,
                     progress=False)
    generate_dataset("totalseg", str(tmp_path / "ts"), 1, "thorax_abdomen", (6.0, 6.0, 6.0), seed=4, progress=False)
    convert_abdomenct1k_dataset(tmp_path / "ab", raw, 61)
    convert_totalseg_dataset(tmp_path / "ts", raw, 62)
    out = merge_datasets([61, 62], raw, 63, "Pseudo", "pseudo", teachers=[Teacher("lung_morph", "lungs")])
    assert not list(raw.glob(".*_merging"))  # the staging folder is gone
    records = json.loads((out / "annotated_labels.json").read_text())
    ab_case = next(c for c in records if c.startswith("abdomenct1k"))
    assert str(L["lungs"]) in records[ab_case]["pseudo"] and records[ab_case]["unannotated"] == "pseudo"
    assert (read(out / "labelsTr" / f"{ab_case}.nii.gz") == L["lungs"]).sum() > 100


@pytest.mark.slow
def test_a_trained_nnunet_teacher_completes_a_dataset_that_nnunet_verifies_and_trains_on(tmp_path, nnunet_env):
    """A tiny CPU-trained CT-ORG model (priority = its validation Dice) fills AbdomenCT-1K cases; then nnU-Net's
    --verify_dataset_integrity passes and CTOrgIOUTrainer trains on the result."""
    from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.demo import add_cpu_demo_configuration

    raw, env = nnunet_env / "nnUNet_raw", dict(os.environ)

    def run(*cmd):
        proc = subprocess.run([nnunet_command(cmd[0]), *cmd[1:]], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    generate_dataset("ctorg", str(tmp_path / "ct"), 5, "abdomen", (8.0, 8.0, 8.0), first_id=21, progress=False)
    generate_dataset("abdomenct1k", str(tmp_path / "ab"), 5, "abdomen", (8.0, 8.0, 8.0), seed=9, progress=False)
    ctorg = convert_ctorg_dataset(tmp_path / "ct", raw, 71)
    convert_abdomenct1k_dataset(tmp_path / "ab", raw, 72)
    run("nnUNetv2_plan_and_preprocess", "-d", "71", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar")
    add_cpu_demo_configuration(nnunet_env / "nnUNet_preprocessed" / ctorg.name / "nnUNetPlans.json")
    run("nnUNetv2_train", "71", "3d_cpu_demo", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu")
    model = nnunet_env / "nnUNet_results" / ctorg.name / "CTOrgIOUTrainer_tiny__nnUNetPlans__3d_cpu_demo"
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())

    run("nnunet_ctorg_merge_datasets", "-i", "71", "72", "-d", "73", "-n", "Merged", "--unannotated", "ignore")
    run("nnunet_ctorg_complete_dataset", "-i", "73", "-d", "74", "-n", "Completed", "--teacher",
        f"ctorg={model}:lungs,bone", "--teacher", "lung_morph=lungs", "--priority", "lung_morph:lungs=0.1",
        "--disable_tta")
    out = raw / "Dataset074_Completed"
    records = json.loads((out / "annotated_labels.json").read_text())
    ab_case = next(c for c in records if c.startswith("abdomenct1k"))
    record = records[ab_case]
    assert record["teachers"] == ["ctorg", "lung_morph"]
    bone = record["pseudo"].get(str(L["bone"]), [])
    assert all(p["teacher"] == "ctorg" for p in bone)  # only the nnU-Net teacher may fill bone
    if bone:  # the teacher's priority for bone is its validation Dice from nnU-Net's summary
        assert bone[0]["priority"] == pytest.approx(summary["mean"][str(L["bone"])]["Dice"])
    ctorg_case = next(c for c in records if c.startswith("ctorg"))
    assert np.array_equal(read(out / "labelsTr" / f"{ctorg_case}.nii.gz"),
                          read(raw / "Dataset073_Merged" / "labelsTr" / f"{ctorg_case}.nii.gz"))  # nothing missing

    run("nnUNetv2_plan_and_preprocess", "-d", "74", "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar",
        "--verify_dataset_integrity")
    add_cpu_demo_configuration(nnunet_env / "nnUNet_preprocessed" / out.name / "nnUNetPlans.json")
    run("nnUNetv2_train", "74", "3d_cpu_demo", "0", "-tr", "CTOrgIOUTrainer_tiny", "-device", "cpu")
    assert (nnunet_env / "nnUNet_results" / out.name / "CTOrgIOUTrainer_tiny__nnUNetPlans__3d_cpu_demo" / "fold_0" /
            "checkpoint_final.pth").is_file()
    shutil.rmtree(nnunet_env / "nnUNet_results")


def test_a_corrupt_case_is_reported_by_name_and_leaves_nothing_behind(hidden):
    raw, truth, source = hidden
    case = sorted(json.loads((source / "annotated_labels.json").read_text()))[0]
    (source / "labelsTr" / f"{case}.nii.gz").write_bytes(b"not a nifti")
    out = complete_dataset(52, raw, 59, [Oracle("oracle", truth, list(L)[1:])], "Corrupt", progress=False)
    summary = json.loads((out / "completion_summary_part0of1.json").read_text())
    assert list(summary["failed"]) == [case] and case in summary["failed"][case]
    assert not list(out.rglob(f"{case}*"))
    assert len(summary["written"]) == 2
