"""Merging converted datasets, the unannotated-organ strategies, and the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.body import body_mask
from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
from nnunet_ctorg.dataset_conversion.merge import BONE_MIN_HU, _ignore_unknown, merge_datasets, stratified_folds
from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
from nnunet_ctorg.phantoms.cli import generate_dataset

SPACING = (8.0, 8.0, 10.0)


@pytest.fixture()
def three_sources(tmp_path, nnunet_env):
    raw = nnunet_env / "nnUNet_raw"
    generate_dataset("ctorg", str(tmp_path / "ct"), 2, "abdomen", SPACING, first_id=20, seed=1, progress=False)
    generate_dataset("abdomenct1k", str(tmp_path / "ab"), 2, "abdomen", SPACING, seed=11, progress=False)
    generate_dataset("totalseg", str(tmp_path / "ts"), 3, "abdomen", SPACING, seed=41, progress=False)
    convert_ctorg_dataset(tmp_path / "ct", raw, 31)
    convert_abdomenct1k_dataset(tmp_path / "ab", raw, 32)
    convert_totalseg_dataset(tmp_path / "ts", raw, 33)
    return raw


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_ignore_label_appears_exactly_where_organs_are_unknown(three_sources, nnunet_env):
    out = merge_datasets([31, 32, 33], three_sources, 40, "Merged", "ignore")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == 9 and meta["numTraining"] == 1 + 2 + 2
    src = three_sources / "Dataset032_AbdomenCT1K"
    for case, source in (("abdomenct1k_00001", src), ("ctorg_021", three_sources / "Dataset031_CTORG")):
        merged, original = read(out / "labelsTr" / f"{case}.nii.gz"), read(source / "labelsTr" / f"{case}.nii.gz")
        body = body_mask(read(source / "imagesTr" / f"{case}_0000.nii.gz").astype(np.float32))
        expected = np.where((original == 0) & body, 9, original)
        assert np.array_equal(merged, expected)
        assert (merged == 9).any() and not (merged[~body] == 9).any()
    # TotalSegmentator annotates every organ, bone only in part: only bone-like unlabelled voxels are ignored
    ts = read(out / "labelsTr" / "totalseg_s0000.nii.gz")
    ts_dir = three_sources / "Dataset033_TotalSegmentator"
    ts_source = read(ts_dir / "labelsTr" / "totalseg_s0000.nii.gz")
    hu = read(ts_dir / "imagesTr" / "totalseg_s0000_0000.nii.gz").astype(np.float32)
    changed = ts != ts_source
    assert np.all(ts[changed] == 9) and np.all(ts_source[changed] == 0)  # at 8 mm every dense voxel is annotated
    assert np.all(hu[changed] >= BONE_MIN_HU) and not changed[~body_mask(hu)].any()
    record = json.loads((out / "annotations" / "totalseg_s0000.json").read_text())
    assert record["unannotated"] is None and record["ignored_voxels"] == {"partial_bone": int(changed.sum())}
    assert record["partial"] == [5]
    record = json.loads((out / "annotations" / "abdomenct1k_00001.json").read_text())
    assert record["merged_from"] == "Dataset032_AbdomenCT1K" and record["unannotated"] == "ignore"
    assert (out / "imagesTs" / "ctorg_020_0000.nii.gz").is_file()
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / out.name / "splits_final.json").read_text())
    training = ["abdomenct1k_00001", "abdomenct1k_00002", "ctorg_021", "totalseg_s0000", "totalseg_s0001"]
    assert len(splits) == 5 and sorted(c for fold in splits for c in fold["val"]) == training
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == training and len(fold["val"]) == 1


def test_stratified_folds_put_every_source_in_every_validation_set_and_keep_groups_together():
    records = {f"{source}_{i:03d}": {"source": source} for source, n in (("ctorg", 12), ("totalseg", 30),
                                                                          ("abdomenct1k", 11)) for i in range(n)}
    records["abdomenct1k_000"]["fold_group"] = records["abdomenct1k_007"]["fold_group"] = "LiTS liver_74"
    folds = stratified_folds(records)
    assert len(folds) == 5
    assert sorted(c for fold in folds for c in fold["val"]) == sorted(records)
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == sorted(records)
        counts = {s: sum(c.startswith(s) for c in fold["val"]) for s in ("ctorg", "totalseg", "abdomenct1k")}
        assert counts["totalseg"] == 6 and counts["ctorg"] in (2, 3) and counts["abdomenct1k"] in (2, 3)
        assert ("abdomenct1k_000" in fold["val"]) == ("abdomenct1k_007" in fold["val"])
    assert sorted(len(f["val"]) for f in folds) == [10, 10, 11, 11, 11]  # 53 cases, balanced
    six_each = {f"{source}_{i}": {"source": source} for source in ("a", "b", "c") for i in range(6)}
    sizes = [len(f["val"]) for f in stratified_folds(six_each)]
    assert sorted(sizes) == [3, 3, 4, 4, 4]  # each source's sixth case goes to another fold
    assert stratified_folds(records) == folds  # fixed seed


def _body_with_rod_blob_and_rail():
    z, y, x = np.mgrid[:20, :40, :40]
    hu = np.full((20, 40, 40), -1000.0, np.float32)
    body = (y - 18) ** 2 + (x - 20) ** 2 <= 12 ** 2
    hu[body] = 40.0
    hu[body & ((y - 18) ** 2 + (x - 14) ** 2 <= 4)] = 700.0  # a bone rod inside the body
    blob = body & ((y - 18) ** 2 + (x - 26) ** 2 <= 4)
    hu[blob] = 150.0  # a contrast vessel: dense-ish, without a >= 250 HU core
    rail = (y >= 35) & (y <= 36) & (np.abs(x - 20) <= 10)
    hu[rail] = 1000.0  # a table rail in the air outside the body
    image = sitk.GetImageFromArray(hu)
    return hu, image, body, blob, rail


def test_partial_bone_ignore_is_bone_like_and_inside_the_body():
    hu, image, body, blob, rail = _body_with_rod_blob_and_rail()
    out, counts = _ignore_unknown(np.zeros(hu.shape, np.uint8), image, [], 9, {5: "bone"})
    assert np.all(out[hu == 700] == 9)
    assert not np.any(out[rail] == 9) and not np.any(out[blob] == 9)
    assert hu[out == 9].min() >= 0 and counts == {"partial_bone": int((out == 9).sum())}
    out, counts = _ignore_unknown(np.zeros(hu.shape, np.uint8), image, [], 9, {8: "pancreas"})
    assert np.all(out[body] == 9) and counts == {"partial_pancreas": int(body_mask(hu).sum())}


def test_background_strategy_copies_labels(three_sources):
    out = merge_datasets([31, 32], three_sources, 41, "Naive", "background")
    assert "ignore" not in json.loads((out / "dataset.json").read_text())["labels"]
    assert np.array_equal(read(out / "labelsTr" / "abdomenct1k_00002.nii.gz"),
                          read(three_sources / "Dataset032_AbdomenCT1K" / "labelsTr" / "abdomenct1k_00002.nii.gz"))


def test_pseudo_needs_teachers(three_sources):
    with pytest.raises(ValueError, match="'pseudo' strategy needs teachers"):
        merge_datasets([31, 32], three_sources, 42, "Pseudo", "pseudo")


def test_merge_refuses_mismatched_inputs(three_sources):
    with pytest.raises(FileNotFoundError, match="no dataset with id 99"):
        merge_datasets([31, 99], three_sources, 43)
    with pytest.raises(ValueError, match="case ctorg_021 is in both"):
        merge_datasets([31, 31], three_sources, 44)
    meta = three_sources / "Dataset032_AbdomenCT1K" / "dataset.json"
    spec = json.loads(meta.read_text())
    spec["labels"]["extra"] = 9
    meta.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="other labels"):
        merge_datasets([31, 32], three_sources, 45)


def test_command_line_summary_and_errors(tmp_path, nnunet_env):
    generate_dataset("ctorg", str(tmp_path / "ct"), 2, "abdomen", SPACING, first_id=21, progress=False)
    labels = tmp_path / "ct" / "labels-22.nii.gz"
    img = sitk.ReadImage(str(labels))
    sitk.WriteImage(img * 3, str(labels))  # values up to 15: not CT-ORG
    script = "from nnunet_ctorg.dataset_conversion.cli import convert_ctorg_main; convert_ctorg_main()"
    cmd = [sys.executable, "-c", script, str(tmp_path / "ct"), "-d", "51"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "1 case(s) written, 0 already there, 1 failed" in proc.stdout
    assert "failed ctorg_022: CT-ORG case 22: unexpected label values" in proc.stdout
    summary = json.loads((nnunet_env / "nnUNet_raw" / "Dataset051_CTORG" / "conversion_summary.json").read_text())
    assert list(summary["failed"]) == ["ctorg_022"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert "0 case(s) written, 1 already there, 1 failed" in again.stdout
    strict = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, env=dict(os.environ))
    assert strict.returncode != 0
    assert strict.stderr.strip().splitlines()[-1].startswith("nnunet_ctorg_convert_ctorg: error: CT-ORG case 22")


@pytest.mark.slow
def test_merged_dataset_with_ignore_label_passes_nnunet_verify_dataset_integrity(three_sources):
    from tests.conftest import nnunet_command

    merge_datasets([31, 32, 33], three_sources, 46, "MergedIgnore", "ignore")
    proc = subprocess.run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "46", "-c", "3d_fullres",
                           "--verify_dataset_integrity", "--no_pp", "-npfp", "1"],
                          env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_a_fold_group_across_sources_stays_in_one_fold():
    """Copies of one scan kept by `--duplicates same_fold` (or flagged) come from two sources: one fold holds both."""
    records = {f"{source}_{i:03d}": {"source": source} for source in ("ctorg", "abdomenct1k") for i in range(10)}
    records["ctorg_003"]["fold_group"] = records["abdomenct1k_005"]["fold_group"] = "same scan as ctorg_003"
    folds = stratified_folds(records)
    holding = [k for k, fold in enumerate(folds) if {"ctorg_003", "abdomenct1k_005"} & set(fold["val"])]
    assert len(holding) == 1 and {"ctorg_003", "abdomenct1k_005"} <= set(folds[holding[0]]["val"])
    assert sorted(c for fold in folds for c in fold["val"]) == sorted(records)
