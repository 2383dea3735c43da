"""CT-ORG to nnU-Net conversion on phantoms, and its errors on bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
from nnunet_ctorg.phantoms.cli import generate_dataset

SPACING = (8.0, 8.0, 10.0)


@pytest.fixture()
def ctorg_dir(tmp_path):
    src = tmp_path / "ctorg"
    generate_dataset("ctorg", str(src), 2, "abdomen", SPACING, first_id=0, progress=False)
    generate_dataset("ctorg", str(src), 2, "abdomen", SPACING, first_id=21, progress=False)
    return src


def test_converts_with_ctorg_test_split_and_dataset_json(ctorg_dir, tmp_path):
    out = convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, "CTORG")
    assert out.name == "Dataset007_CTORG"
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["ctorg_000_0000.nii.gz", "ctorg_001_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ctorg_021.nii.gz", "ctorg_022.nii.gz"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 2
    assert meta["labels"]["liver"] == 1 and meta["labels"]["brain"] == 6
    image = sitk.ReadImage(str(out / "imagesTr" / "ctorg_021_0000.nii.gz"))
    label = sitk.ReadImage(str(out / "labelsTr" / "ctorg_021.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8 and image.GetPixelID() == sitk.sitkInt16
    assert image.GetDirection() == label.GetDirection() and image.GetOrigin() == label.GetOrigin()
    src = sitk.ReadImage(str(ctorg_dir / "labels-21.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(src).astype(np.uint8))
    record = json.loads((out / "annotations" / "ctorg_021.json").read_text())
    assert record["source"] == "ctorg" and record["annotated"] == [1, 2, 3, 4, 5]  # abdomen: no brain


def test_brain_is_annotated_only_where_present(tmp_path):
    src = tmp_path / "ctorg"
    generate_dataset("ctorg", str(src), 1, "head_knee", (12.0, 12.0, 15.0), first_id=30, progress=False)
    out = convert_ctorg_dataset(src, tmp_path / "raw", 8)
    assert json.loads((out / "annotations" / "ctorg_030.json").read_text())["annotated"] == [1, 2, 3, 4, 5, 6]


def test_skips_bad_cases_unless_strict_and_resumes(ctorg_dir, tmp_path):
    _rewrite(ctorg_dir / "labels-22.nii.gz", lambda a: np.where(a == 1, 9, a).astype(np.float32))
    out = convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=False)
    assert not (out / "labelsTr" / "ctorg_022.nii.gz").exists()
    assert not (out / "annotations" / "ctorg_022.json").exists()
    assert (out / "labelsTr" / "ctorg_021.nii.gz").exists()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
    mtime = (out / "imagesTr" / "ctorg_021_0000.nii.gz").stat().st_mtime_ns
    convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=False)
    assert (out / "imagesTr" / "ctorg_021_0000.nii.gz").stat().st_mtime_ns == mtime  # skipped, not rewritten


def test_refuses_a_used_dataset_id(ctorg_dir, tmp_path):
    (tmp_path / "raw" / "Dataset007_Other").mkdir(parents=True)
    with pytest.raises(ValueError, match="already used by .*Dataset007_Other"):
        convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7)


def _rewrite(path, fn):
    image = sitk.ReadImage(str(path))
    array = fn(sitk.GetArrayFromImage(image))
    new = sitk.GetImageFromArray(array)
    new.CopyInformation(image)
    sitk.WriteImage(new, str(path))


@pytest.mark.parametrize("damage,match", [
    (lambda a: np.where(a == 1, 1.4, a).astype(np.float32), "labels are not whole numbers"),
    (lambda a: np.where(a == 1, 9, a).astype(np.float32), r"unexpected label values \[9\]"),
])
def test_bad_labels_name_the_case(ctorg_dir, tmp_path, damage, match):
    _rewrite(ctorg_dir / "labels-22.nii.gz", damage)
    with pytest.raises(ValueError, match=f"CT-ORG case 22: {match}"):
        convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=True)


def test_nan_in_ct_names_the_case(ctorg_dir, tmp_path):
    def add_nan(a):
        a = a.astype(np.float32)
        a[a.shape[0] // 2, 5, 5] = np.nan
        return a

    _rewrite(ctorg_dir / "volume-1.nii.gz", add_nan)
    with pytest.raises(ValueError, match="CT-ORG case 1: the CT contains 1 NaN"):
        convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=True)


def test_geometry_mismatch_names_the_case(ctorg_dir, tmp_path):
    image = sitk.ReadImage(str(ctorg_dir / "labels-21.nii.gz"))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(ctorg_dir / "labels-21.nii.gz"))
    with pytest.raises(ValueError, match=r"CT-ORG case 21: label map differs in geometry from its image in spacing: "
                                         r"size \(58, 58, 52\), spacing \(1.0, 1.0, 1.0\).* vs image size"):
        convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=True)


def test_missing_or_corrupt_files(ctorg_dir, tmp_path):
    (ctorg_dir / "labels-21.nii.gz").unlink()
    with pytest.raises(ValueError, match="CT-ORG case 21: label map not found: .*labels-21.nii.gz"):
        convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=True)
    (ctorg_dir / "labels-21.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="CT-ORG case 21: label map .* cannot be read"):
        convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7, strict=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a CT-ORG folder"):
        convert_ctorg_dataset(tmp_path / "empty", tmp_path / "r", 7)


def test_tcia_download_layout_is_found_below_the_folder_given(tmp_path):
    src = tmp_path / "CT-ORG"
    generate_dataset("ctorg", str(src), 2, "abdomen", SPACING, first_id=21, progress=False, quirks=True)
    assert (src / "OrganSegmentations" / "volume-21.nii.gz").is_file() and not (src / "volume-21.nii.gz").exists()
    out = convert_ctorg_dataset(src, tmp_path / "raw", 9)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ctorg_021.nii.gz", "ctorg_022.nii.gz"]
    out = convert_ctorg_dataset(tmp_path, tmp_path / "raw2", 9)  # two levels up: still one folder with volumes
    assert len(list((out / "labelsTr").iterdir())) == 2


def test_training_bone_is_partial_test_bone_is_not(ctorg_dir, tmp_path):
    out = convert_ctorg_dataset(ctorg_dir, tmp_path / "raw", 7)
    assert json.loads((out / "annotations" / "ctorg_021.json").read_text())["partial"] == [5]
    assert json.loads((out / "annotations" / "ctorg_000.json").read_text())["partial"] == []


def test_known_bad_cases_are_left_out_with_their_reason(tmp_path):
    src = tmp_path / "ctorg"
    generate_dataset("ctorg", str(src), 2, "abdomen", SPACING, first_id=18, progress=False)  # volume-18, -19
    out = convert_ctorg_dataset(src, tmp_path / "raw", 10)
    assert [p.name for p in (out / "labelsTs").iterdir()] == ["ctorg_018.nii.gz"]
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert list(summary["known_bad_left_out"]) == ["ctorg_019"]
    assert "VISTA3D" in summary["known_bad_left_out"]["ctorg_019"]
    table = tmp_path / "none.json"
    table.write_text(json.dumps({"cases": []}))
    out = convert_ctorg_dataset(src, tmp_path / "raw", 10, known_bad=table)
    assert (out / "labelsTs" / "ctorg_019.nii.gz").is_file()


def test_command_exits_non_zero_when_no_case_is_converted(ctorg_dir, tmp_path):
    import subprocess

    from tests.conftest import nnunet_command

    for labels in ctorg_dir.glob("labels-*.nii.gz"):
        _rewrite(labels, lambda a: np.where(a == 1, 9, a).astype(np.float32))
    cmd = [nnunet_command("nnunet_ctorg_convert_ctorg"), str(ctorg_dir), "-d", "11", "-o", str(tmp_path / "raw")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "error: no case was converted (4 failed" in proc.stderr.strip().splitlines()[-1]


def test_organsegmentations_wins_and_several_folders_are_refused(tmp_path):
    from nnunet_ctorg.dataset_conversion.ctorg import find_ctorg_folder

    for sub in ("OrganSegmentations", "backup"):
        (tmp_path / "CT-ORG" / sub).mkdir(parents=True)
        (tmp_path / "CT-ORG" / sub / "volume-1.nii.gz").write_bytes(b"")
    assert find_ctorg_folder(tmp_path / "CT-ORG") == tmp_path / "CT-ORG" / "OrganSegmentations"
    with pytest.raises(ValueError, match="CT-ORG volumes found in several folders"):
        find_ctorg_folder(tmp_path)
