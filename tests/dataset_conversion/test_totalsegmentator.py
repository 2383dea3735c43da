"""TotalSegmentator conversion: phantoms in the exact layout, and a case built from the real CT."""

import csv
import json
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.phantoms.cli import generate_dataset
from nnunet_ctorg.phantoms.layouts import PhantomSettings
from tests.conftest import nnunet_command

SPACING = (8.0, 8.0, 10.0)


@pytest.fixture()
def totalseg_dir(tmp_path):
    src = tmp_path / "ts"
    generate_dataset("totalseg", str(src), 4, "thorax_abdomen", SPACING, seed=2, progress=False)
    return src


def test_converts_splits_labels_and_records(totalseg_dir, nnunet_env):
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 11)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"totalseg_s000{i}.nii.gz" for i in range(3)]
    assert [p.name for p in (out / "labelsTs").iterdir()] == ["totalseg_s0003.nii.gz"]
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / out.name / "splits_final.json").read_text())
    assert splits == [{"train": ["totalseg_s0000", "totalseg_s0001"], "val": ["totalseg_s0002"]}]

    truth = PhantomSettings("thorax_abdomen", SPACING, seed=2).make(1)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz")))
    assert np.array_equal(labels, truth.organ_labels())
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["annotated"] == list(range(1, 9)) and record["missing_masks"] == []


def test_missing_mask_files_are_tolerated_and_recorded(totalseg_dir, nnunet_env):
    seg = totalseg_dir / "s0000" / "segmentations"
    (seg / "spleen.nii.gz").unlink()
    (seg / "rib_left_3.nii.gz").unlink()
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 12)
    record = json.loads((out / "annotations" / "totalseg_s0000.json").read_text())
    assert 7 not in record["annotated"] and 5 in record["annotated"]
    assert sorted(record["missing_masks"]) == ["rib_left_3", "spleen"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0000.nii.gz")))
    assert not np.any(labels == 7)


def test_v1_download_is_detected(tmp_path, nnunet_env):
    src = tmp_path / "v1"
    generate_dataset("totalseg", str(src), 3, "abdomen", SPACING, version="v1", progress=False)
    out = convert_totalseg_dataset(src, nnunet_env / "nnUNet_raw", 13)
    record = json.loads((out / "annotations" / "totalseg_s0000.json").read_text())
    assert record["missing_masks"] == []  # v1 names only: no skull, sternum, S1 expected
    truth = PhantomSettings("abdomen", SPACING).make(0)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0000.nii.gz")))
    v1_bone = (truth.organ_labels() == 5) & (truth.mask("sternum") == 0)  # v1 has no sternum (nor skull)
    assert np.array_equal(labels == 5, v1_bone)


@pytest.mark.parametrize("damage,match", [
    ("geometry", "mask liver differs in geometry"),
    ("values", "mask liver is not binary"),
    ("no_ct", "image not found"),
])
def test_bad_cases_are_reported_by_name_and_skipped(totalseg_dir, nnunet_env, damage, match):
    case = totalseg_dir / "s0001"
    liver = case / "segmentations" / "liver.nii.gz"
    if damage == "geometry":
        img = sitk.ReadImage(str(liver))
        img.SetOrigin((0.0, 0.0, 0.0))
        sitk.WriteImage(img, str(liver))
    elif damage == "values":
        img = sitk.ReadImage(str(liver))
        sitk.WriteImage(img * 3, str(liver))
    else:
        (case / "ct.nii.gz").unlink()
    with pytest.raises(ValueError, match=f"TotalSegmentator case s0001: {match}"):
        convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 14, strict=True)
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 14)
    assert not list(out.rglob("totalseg_s0001*"))
    assert (out / "labelsTr" / "totalseg_s0000.nii.gz").is_file()


def test_bad_meta_csv(totalseg_dir, nnunet_env):
    meta = totalseg_dir / "meta.csv"
    meta.write_text(meta.read_text().replace(";train", ";training"))
    with pytest.raises(ValueError, match="unknown split value"):
        convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 15)
    meta.unlink()
    with pytest.raises(FileNotFoundError, match="meta.csv not found"):
        convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 15)


def test_real_ct_case_maps_every_organ_to_the_union_of_its_structures(real_ct_dir, tmp_path, nnunet_env):
    """Build a real-layout case from the real CT and TotalSegmentator's reference; convert; compare."""
    names = json.loads((real_ct_dir / "example_seg_labels.json").read_text())
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))
    seg_img = sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz"))
    seg = sitk.GetArrayFromImage(seg_img)
    root = tmp_path / "real"
    (root / "real0" / "segmentations").mkdir(parents=True)
    sitk.WriteImage(ct, str(root / "real0" / "ct.nii.gz"))
    for i, name in names.items():
        mask = sitk.GetImageFromArray((seg == int(i)).astype(np.uint8))
        mask.CopyInformation(seg_img)
        sitk.WriteImage(mask, str(root / "real0" / "segmentations" / f"{name}.nii.gz"))
    with open(root / "meta.csv", "w", newline="") as f:
        csv.writer(f, delimiter=";").writerows([["image_id", "split"], ["real0", "train"]])

    out = convert_totalseg_dataset(root, nnunet_env / "nnUNet_raw", 16)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_real0.nii.gz")))
    scheme = LabelScheme.load(None)
    checked = 0
    for organ in ("liver", "kidneys", "spleen", "pancreas", "lungs", "bone"):
        ids = [int(i) for i, n in names.items() if n in scheme.totalseg_structures(organ)]
        reference = np.isin(seg, ids)
        assert np.array_equal(labels == scheme.labels[organ], reference), organ
        checked += reference.any()
    assert checked >= 5
    image = sitk.ReadImage(str(out / "imagesTr" / "totalseg_real0_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))
    assert image.GetDirection() == ct.GetDirection()


@pytest.mark.slow
def test_converted_dataset_passes_nnunet_verify_dataset_integrity(totalseg_dir, nnunet_env):
    convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 17)
    proc = subprocess.run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "17", "-c", "3d_fullres",
                           "--verify_dataset_integrity", "--no_pp", "-npfp", "1"],
                          env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
