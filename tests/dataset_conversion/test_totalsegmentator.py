"""TotalSegmentator conversion: phantoms in the exact layout, and a case built from the real CT."""

import csv
import json
import os
import re
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import TOTALSEG_V1_STRUCTURES, TOTALSEG_V2_STRUCTURES
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


def test_v1_download_is_detected_and_uses_the_official_v1_list(tmp_path, nnunet_env):
    src = tmp_path / "v1"
    generate_dataset("totalseg", str(src), 3, "thorax_abdomen", SPACING, version="v1", progress=False)
    files = {p.name[:-7] for p in (src / "s0000" / "segmentations").iterdir()}
    assert files == set(TOTALSEG_V1_STRUCTURES) and len(files) == 104  # the v1 download's file set
    assert {"face", "heart_myocardium", "pulmonary_artery"} <= files and not files & {"skull", "sternum", "heart"}
    assert (src / "meta.csv").read_text().splitlines()[0] == "image_id;age;gender;institute;study_type;split"
    out = convert_totalseg_dataset(src, nnunet_env / "nnUNet_raw", 13)
    record = json.loads((out / "annotations" / "totalseg_s0000.json").read_text())
    assert record["version"] == "v1" and record["missing_masks"] == [] and "quirks" not in record
    assert record["partial"] == [5]
    truth = PhantomSettings("thorax_abdomen", SPACING).make(0)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0000.nii.gz")))
    v1_bone = (truth.organ_labels() == 5) & (truth.mask("sternum") == 0)  # v1 has no sternum (nor skull)
    assert truth.mask("sternum").any() and np.array_equal(labels == 5, v1_bone)
    assert np.array_equal(labels == 4, truth.organ_labels() == 4)  # kidneys (cysts inside the v1 kidney files)
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["release"] == "v1" and summary["failed"] == {}


def test_v2_0_1_meta_csv_with_byte_order_mark_and_11_columns(totalseg_dir, nnunet_env):
    raw = (totalseg_dir / "meta.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfimage_id;") and raw.splitlines()[0].count(b";") == 10
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 18)
    assert json.loads((out / "conversion_summary.json").read_text())["release"] == "v2.0.1"
    assert len(list((out / "labelsTr").iterdir())) == 3


def test_dataset_found_below_the_folder_given(totalseg_dir, tmp_path, nnunet_env):
    unpacked = tmp_path / "download"
    unpacked.mkdir()
    totalseg_dir.rename(unpacked / "Totalsegmentator_dataset_v201")
    out = convert_totalseg_dataset(unpacked, nnunet_env / "nnUNet_raw", 19)
    assert len(list((out / "labelsTr").iterdir())) == 3


def test_unknown_mask_files_are_recorded_not_fatal(totalseg_dir, nnunet_env):
    seg = totalseg_dir / "s0001" / "segmentations"
    (seg / "livr.nii.gz").write_bytes((seg / "liver.nii.gz").read_bytes())
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 20, strict=True)
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["quirks"]["unknown_mask_files"] == ["livr"]
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["unknown_mask_files"] == ["livr"] and summary["quirks"]["unknown_mask_files"] == ["totalseg_s0001"]
    truth = PhantomSettings("thorax_abdomen", SPACING, seed=2).make(1)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz")))
    assert np.array_equal(labels, truth.organ_labels())


def test_sheared_headers_are_read_with_nibabel_voxel_for_voxel(tmp_path, nnunet_env):
    src = tmp_path / "ts"
    generate_dataset("totalseg", str(src), 3, "abdomen", SPACING, seed=3, progress=False, quirks=True)
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(src / "s0001" / "ct.nii.gz"))
    out = convert_totalseg_dataset(src, nnunet_env / "nnUNet_raw", 21, strict=True)
    truth = PhantomSettings("abdomen", SPACING, seed=3).make(1)
    labels = sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(labels), truth.organ_labels())
    image = sitk.ReadImage(str(out / "imagesTr" / "totalseg_s0001_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), truth.ct)
    assert np.allclose(image.GetOrigin(), truth.origin) and np.allclose(image.GetSpacing(), truth.spacing, rtol=1e-5)
    assert np.allclose(image.GetDirection(), truth.direction, atol=2e-3)
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["quirks"]["image_read_with_nibabel"]["shear_rad"] == pytest.approx(2e-3, rel=0.01)
    scheme = LabelScheme.load(None)
    mapped = {f"mask {s}" for o in scheme.organs_of("totalseg")
              for s in scheme.totalseg_structures(o, TOTALSEG_V2_STRUCTURES)}
    assert set(record["quirks"]["masks_read_with_nibabel"]) == mapped  # every mask the organs need was read
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["quirks"]["image_read_with_nibabel"] == ["totalseg_s0001"]


def test_known_bad_cases_of_the_release_are_left_out(totalseg_dir, nnunet_env):
    meta = totalseg_dir / "meta.csv"
    lines = meta.read_text(encoding="utf-8-sig").splitlines()
    v200 = [";".join(line.split(";")[:6]) for line in lines]  # no scanner/pathology columns: v2.0.0
    meta.write_text("\n".join(v200).replace("s0002", "s0184") + "\n")
    (totalseg_dir / "s0002").rename(totalseg_dir / "s0184")
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 22)
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["release"] == "v2.0.0" and "issue #193" in summary["known_bad_left_out"]["totalseg_s0184"]
    assert not (out / "labelsTr" / "totalseg_s0184.nii.gz").exists()
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 22, keep_known_bad=True)
    assert (out / "labelsTr" / "totalseg_s0184.nii.gz").is_file()


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


def test_command_converts_a_quirky_v1_download_and_reports_each_quirk(tmp_path, nnunet_env):
    src = tmp_path / "download"
    generate_dataset("totalseg", str(src / "Totalsegmentator_dataset"), 3, "abdomen", SPACING, seed=5,
                     version="v1", progress=False, quirks=True)
    seg = src / "Totalsegmentator_dataset" / "s0000" / "segmentations"
    (seg / "liver_vessels.nii.gz").write_bytes((seg / "liver.nii.gz").read_bytes())  # a file of another task
    proc = subprocess.run([nnunet_command("nnunet_ctorg_convert_totalsegmentator"), str(src), "-d", "23"],
                          capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "3 case(s) written, 0 already there, 0 failed, 0 known bad left out" in proc.stdout
    assert "handled image_read_with_nibabel: 1 case(s), e.g. totalseg_s0001" in proc.stdout
    assert "handled unknown_mask_files: 1 case(s), e.g. totalseg_s0000" in proc.stdout
    out = nnunet_env / "nnUNet_raw" / "Dataset023_TotalSegmentator"
    for k, split in ((0, "Tr"), (1, "Tr"), (2, "Ts")):
        truth = PhantomSettings("abdomen", SPACING, seed=5).make(k)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"labels{split}" / f"totalseg_s000{k}.nii.gz")))
        expected = np.where((truth.organ_labels() == 5) & (truth.mask("sternum") > 0), 0, truth.organ_labels())
        assert np.array_equal(labels, expected), k  # v1: no sternum


def test_known_bad_entries_apply_to_their_release_only():
    from nnunet_ctorg.dataset_conversion.common import load_known_bad

    assert "s0184" not in load_known_bad("totalseg", "v2.0.1")
    assert "s0184" in load_known_bad("totalseg", "v2.0.0")
    assert "corrupt" in load_known_bad("totalseg", "v1")["s0864"]["reason"]


def test_structure_set_is_detected_per_case(tmp_path, nnunet_env):
    import shutil

    generate_dataset("totalseg", str(tmp_path / "v2"), 2, "abdomen", SPACING, progress=False)
    generate_dataset("totalseg", str(tmp_path / "v1"), 2, "abdomen", SPACING, version="v1", progress=False)
    shutil.rmtree(tmp_path / "v2" / "s0001" / "segmentations")
    shutil.copytree(tmp_path / "v1" / "s0001" / "segmentations", tmp_path / "v2" / "s0001" / "segmentations")
    out = convert_totalseg_dataset(tmp_path / "v2", nnunet_env / "nnUNet_raw", 24, strict=True)
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["version"] == "v1" and record["missing_masks"] == []
    assert json.loads((out / "annotations" / "totalseg_s0000.json").read_text())["version"] == "v2"


# --- the fast path: masks read in threads, binary check and painting without np.unique, the CT copied as it is


def _convert_one_case(src, image_id, out, threads, monkeypatch):
    from nnunet_ctorg.dataset_conversion import totalsegmentator
    from nnunet_ctorg.dataset_conversion.common import CaseJob

    monkeypatch.setattr(totalsegmentator, "MASK_READ_THREADS", threads)
    job = CaseJob(case=f"totalseg_{image_id}", split="Tr",
                  inputs={"image_id": image_id, "folder": str(src / image_id), "version": "v2", "out": str(out)})
    totalsegmentator.convert_totalseg_job(job, LabelScheme.load(None))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"totalseg_{image_id}.nii.gz")))
    return labels, (out / "annotations" / f"totalseg_{image_id}.json").read_text()


def test_masks_read_in_threads_give_the_labels_and_record_of_one_at_a_time(tmp_path, monkeypatch):
    src = tmp_path / "ts"
    generate_dataset("totalseg", str(src), 2, "thorax_abdomen", SPACING, seed=4, progress=False, quirks=True)
    truth = PhantomSettings("thorax_abdomen", SPACING, seed=4).make(0)
    seg = src / "s0000" / "segmentations"
    liver = sitk.ReadImage(str(seg / "liver.nii.gz"))  # liver (1) also over the kidneys (4): the kidneys win
    overlap = sitk.GetImageFromArray(((truth.organ_labels() == 1) | (truth.organ_labels() == 4)).astype(np.uint8))
    overlap.CopyInformation(liver)
    sitk.WriteImage(overlap, str(seg / "liver.nii.gz"))
    spleen = sitk.ReadImage(str(seg / "spleen.nii.gz"))  # a third of a voxel off: conformed and recorded
    spleen.SetOrigin(tuple(np.add(spleen.GetOrigin(), (SPACING[0] / 3, 0.0, 0.0))))
    sitk.WriteImage(spleen, str(seg / "spleen.nii.gz"))
    for image_id in ("s0000", "s0001"):  # s0001: every header sheared, every mask read with nibabel
        one, record_one = _convert_one_case(src, image_id, tmp_path / "one", 1, monkeypatch)
        four, record_four = _convert_one_case(src, image_id, tmp_path / "four", 4, monkeypatch)
        assert np.array_equal(one, four) and record_one == record_four  # the record's text, key order included
    assert np.array_equal(four, PhantomSettings("thorax_abdomen", SPACING, seed=4).make(1).organ_labels())
    labels, record = _convert_one_case(src, "s0000", tmp_path / "four", 4, monkeypatch)
    assert np.array_equal(labels, truth.organ_labels())  # the liver file's kidney voxels stay kidney
    assert list(json.loads(record)["quirks"]["geometry_corrected"]) == ["mask spleen"]
    scheme = LabelScheme.load(None)
    in_plan_order = [f"mask {s}" for o in scheme.organs_of("totalseg")
                     for s in scheme.totalseg_structures(o, TOTALSEG_V2_STRUCTURES)]
    assert list(json.loads(record_four)["quirks"]["masks_read_with_nibabel"]) == in_plan_order


def test_masks_come_in_plan_order_and_the_first_error_in_that_order_is_raised(monkeypatch):
    """Whatever read finishes first: the masks are painted in ascending label order (the overlap rule) and the
    error raised is the one a read one at a time would have met first."""
    import threading
    import time

    from nnunet_ctorg.dataset_conversion import totalsegmentator

    plan = [(1, "liver"), (4, "kidney_left"), (7, "spleen"), (8, "pancreas")]
    first_done = threading.Event()

    def read(seg_dir, structure, image, case):
        if structure == "liver":  # the liver is read last of all, while the others are read
            overlapped.append(first_done.wait(2))
            time.sleep(0.05)
        else:
            first_done.set()
        if structure in bad:
            raise ValueError(f"{case}: mask {structure} is bad")
        return f"mask {structure}", {"q": {structure: 1}}

    monkeypatch.setattr(totalsegmentator, "_read_checked_mask", read)
    bad, overlapped = set(), []
    got = list(totalsegmentator._read_masks(None, plan, None, "case X", threads=4))
    assert [item for item, _, _ in got] == plan and [m for _, m, _ in got] == [f"mask {s}" for _, s in plan]
    assert overlapped == [True]
    bad = {"liver", "spleen"}
    first_done.clear()
    with pytest.raises(ValueError, match="mask liver is bad"):
        list(totalsegmentator._read_masks(None, plan, None, "case X", threads=4))


def test_corrupt_mask_is_reported_by_case_with_threads(totalseg_dir, nnunet_env, monkeypatch):
    from nnunet_ctorg.dataset_conversion import totalsegmentator

    monkeypatch.setattr(totalsegmentator, "MASK_READ_THREADS", 4)
    seg = totalseg_dir / "s0001" / "segmentations"
    (seg / "spleen.nii.gz").write_bytes(b"\x1f\x8b not a gzip stream")
    spleen = "mask spleen .*spleen.nii.gz cannot be read"
    with pytest.raises(ValueError, match=f"TotalSegmentator case s0001: {spleen}"):
        convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 25, strict=True)
    pancreas = sitk.ReadImage(str(seg / "pancreas.nii.gz"))  # a later organ (8) not binary: spleen (7) comes first
    sitk.WriteImage(pancreas * 2, str(seg / "pancreas.nii.gz"))
    with pytest.raises(ValueError, match=f"TotalSegmentator case s0001: {spleen}"):
        convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 25, strict=True)
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 25)
    assert "totalseg_s0001" in json.loads((out / "conversion_summary.json").read_text())["failed"]
    assert not list(out.rglob("totalseg_s0001*")) and (out / "labelsTr" / "totalseg_s0000.nii.gz").is_file()


def test_truncated_mask_fails_its_case_in_one_line_naming_case_and_mask(totalseg_dir, nnunet_env):
    """A partial download (as v1's s0864, issue #92): SimpleITK reads the cut file without an error, the missing
    voxels 0; the converter reports the case and the file, and converts the other cases."""
    liver = totalseg_dir / "s0001" / "segmentations" / "liver.nii.gz"
    whole = sitk.GetArrayFromImage(sitk.ReadImage(str(liver)))
    packed = liver.read_bytes()
    liver.write_bytes(packed[: len(packed) * 6 // 10])
    silently = sitk.GetArrayFromImage(sitk.ReadImage(str(liver)))
    assert whole.any() and np.count_nonzero(silently) < np.count_nonzero(whole)  # why the check exists
    message = rf"^TotalSegmentator case s0001: mask liver {liver} is truncated or corrupt \(the gzip stream ends early"
    with pytest.raises(ValueError, match=message):
        convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 27, strict=True)
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 27)
    failed = json.loads((out / "conversion_summary.json").read_text())["failed"]
    assert list(failed) == ["totalseg_s0001"] and "\n" not in failed["totalseg_s0001"]
    assert re.match(message, failed["totalseg_s0001"])
    assert not list(out.rglob("totalseg_s0001*"))
    assert sorted(p.name for p in out.glob("labelsT*/*")) == [f"totalseg_s000{k}.nii.gz" for k in (0, 2, 3)]


def test_binary_check_and_painting_agree_with_unique_and_a_boolean_index():
    from nnunet_ctorg.dataset_conversion.totalsegmentator import _is_binary, _paint

    nan, inf = float("nan"), float("inf")
    cases = {np.bool_: [[0, 1], [0, 0], [1, 1]],
             np.uint8: [[0, 1], [0, 0], [1, 1], [0, 2], [0, 255], [3, 1]],
             np.int8: [[0, 1], [0, -1], [1, -128], [0, 2]],
             np.uint16: [[0, 1], [0, 256], [0, 257]],  # 256 and 257: a low byte of 0 or 1
             np.int16: [[0, 1], [0, -1], [-255, 1], [0, 256]],
             np.float32: [[0, 1], [0, 0.5], [-0.0, 1], [0, nan], [0, inf], [0, 1 + 1e-6], [0, -1]],
             np.float64: [[0, 1], [0, 1e-300], [0, nan], [1, 2]]}
    for dtype, value_sets in cases.items():
        for values in value_sets:
            array = np.resize(np.array(values, dtype=dtype), (3, 4, 5))
            assert _is_binary(array) == bool(np.isin(np.unique(array), (0, 1)).all()), (dtype, values)
            if _is_binary(array):
                labels, expected = np.full(array.shape, 3, np.uint8), np.full(array.shape, 3, np.uint8)
                _paint(labels, array, 6)
                expected[array > 0] = 6
                assert np.array_equal(labels, expected), (dtype, values)


def test_int16_ct_is_copied_as_it_is_other_cts_are_encoded_again(totalseg_dir, nnunet_env):
    ct = {k: totalseg_dir / f"s000{k}" / "ct.nii.gz" for k in range(4)}
    for k, pixel, offset in ((1, sitk.sitkFloat32, 0.0), (2, sitk.sitkFloat64, 0.25)):  # whole HU: int16 written,
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(ct[k])), pixel) + offset, str(ct[k]))  # else float32
    out = convert_totalseg_dataset(totalseg_dir, nnunet_env / "nnUNet_raw", 26, strict=True)
    written = {k: out / f"images{'Ts' if k == 3 else 'Tr'}" / f"totalseg_s000{k}_0000.nii.gz" for k in range(4)}
    assert written[0].read_bytes() == ct[0].read_bytes() and written[3].read_bytes() == ct[3].read_bytes()
    for k, pixel in ((1, sitk.sitkInt16), (2, sitk.sitkFloat32)):
        assert written[k].read_bytes() != ct[k].read_bytes()
        result, source = sitk.ReadImage(str(written[k])), sitk.ReadImage(str(ct[k]))
        assert result.GetPixelID() == pixel
        assert np.array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(source))
    for k in range(4):
        label = sitk.ReadImage(str(out / f"labels{'Ts' if k == 3 else 'Tr'}" / f"totalseg_s000{k}.nii.gz"))
        assert np.allclose(geometry := np.r_[label.GetOrigin(), label.GetSpacing(), label.GetDirection()],
                           np.r_[(i := sitk.ReadImage(str(written[k]))).GetOrigin(), i.GetSpacing(),
                                 i.GetDirection()], atol=1e-5), geometry


def test_ct_is_not_copied_when_read_with_nibabel_or_not_gzip_or_its_header_reads_otherwise(tmp_path):
    import nibabel

    from nnunet_ctorg.dataset_conversion.totalsegmentator import nnunet_ready_ct

    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    affine[:3, 3] = [100.0, 80.0, -300.0]
    good = tmp_path / "good.nii.gz"
    nibabel.save(nibabel.Nifti1Image(data, affine), str(good))
    image = sitk.ReadImage(str(good))
    assert nnunet_ready_ct(good, image, {}) == good
    assert nnunet_ready_ct(good, image, {"image_read_with_nibabel": {"reader": "nibabel"}}) is None
    assert nnunet_ready_ct(good, sitk.Cast(image, sitk.sitkFloat32), {}) is None
    assert nnunet_ready_ct(good, sitk.Cast(image, sitk.sitkInt32), {}) is None
    plain = tmp_path / "plain.nii"
    nibabel.save(nibabel.Nifti1Image(data, affine), str(plain))
    assert nnunet_ready_ct(plain, sitk.ReadImage(str(plain)), {}) is None  # not gzip-compressed
    no_codes = nibabel.Nifti1Image(data, affine)
    no_codes.set_qform(None, code=0)
    no_codes.set_sform(None, code=0)
    unset = tmp_path / "unset.nii.gz"
    nibabel.save(no_codes, str(unset))
    image = sitk.ReadImage(str(unset))  # SimpleITK: origin 0 and identity; nibabel: centred on the grid
    assert not np.allclose(image.GetOrigin(), np.diag([-1.0, -1.0, 1.0]) @ nibabel.load(str(unset)).affine[:3, 3])
    assert nnunet_ready_ct(unset, image, {}) is None
