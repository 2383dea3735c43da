"""AbdomenCT-1K conversion: images in part folders paired with masks by case number, and the download's quirks."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
from nnunet_ctorg.phantoms.cli import generate_dataset
from nnunet_ctorg.phantoms.layouts import PhantomSettings

SPACING = (8.0, 8.0, 10.0)


@pytest.fixture()
def abdomen_dir(tmp_path):
    src = tmp_path / "abd"
    generate_dataset("abdomenct1k", str(src), 3, "abdomen", SPACING, seed=4, progress=False)
    return src


def test_pairs_parts_with_masks_and_maps_labels(abdomen_dir, tmp_path):
    out = convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 21, num_processes=2)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"abdomenct1k_0000{i}.nii.gz" for i in (1, 2, 3)]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "abdomenct1k_00002.nii.gz")))
    truth = PhantomSettings("abdomen", SPACING, seed=4).make(1).organ_labels()
    expected = np.where(np.isin(truth, [1, 4, 7, 8]), truth, 0)  # liver, kidneys, spleen, pancreas only
    assert np.array_equal(labels, expected)
    record = json.loads((out / "annotations" / "abdomenct1k_00002.json").read_text())
    assert record["annotated"] == [1, 4, 7, 8] and record["partial"] == []


def test_image_without_mask_is_listed_not_failed_even_when_strict(abdomen_dir, tmp_path):
    (abdomen_dir / "Mask" / "Case_00001.nii.gz").unlink()
    orphan = abdomen_dir / "Mask" / "Case_00009.nii.gz"
    orphan.write_bytes((abdomen_dir / "Mask" / "Case_00002.nii.gz").read_bytes())
    out = convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 22, strict=True)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["abdomenct1k_00002.nii.gz",
                                                                    "abdomenct1k_00003.nii.gz"]
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["failed"] == {}
    assert list(summary["unlabelled_images"]) == ["Case_00001"]
    assert summary["unlabelled_images"]["Case_00001"].endswith("Case_00001_0000.nii.gz")
    assert list(summary["masks_without_images"]) == ["Case_00009"]


def test_bad_values_fail_the_case(abdomen_dir, tmp_path):
    mask = sitk.ReadImage(str(abdomen_dir / "Mask" / "Case_00002.nii.gz"))
    sitk.WriteImage(mask * 2, str(abdomen_dir / "Mask" / "Case_00002.nii.gz"))
    with pytest.raises(ValueError, match=r"AbdomenCT-1K case 00002: unexpected label values \[6, 8\]"):
        convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 22, strict=True)
    out = convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 22)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["abdomenct1k_00001.nii.gz",
                                                                    "abdomenct1k_00003.nii.gz"]


def test_2d_image_is_rejected(abdomen_dir, tmp_path):
    image = sitk.ReadImage(str(abdomen_dir / "AbdomenCT-1K-ImagePart3" / "Case_00003_0000.nii.gz"))
    sitk.WriteImage(image[:, :, 5], str(abdomen_dir / "AbdomenCT-1K-ImagePart3" / "Case_00003_0000.nii.gz"))
    with pytest.raises(ValueError, match="AbdomenCT-1K case 00003: the image must be 3-D"):
        convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 23, strict=True)


def test_no_case_converted_is_an_error(abdomen_dir, tmp_path):
    for mask in (abdomen_dir / "Mask").iterdir():
        sitk.WriteImage(sitk.ReadImage(str(mask)) * 3, str(mask))
    with pytest.raises(ValueError, match="no case was converted \\(3 failed; first: AbdomenCT-1K case 0000"):
        convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 24)


def test_download_quirks_sheared_headers_and_unlabelled_image(tmp_path):
    src = tmp_path / "abd"
    generate_dataset("abdomenct1k", str(src), 4, "abdomen", SPACING, seed=4, progress=False, quirks=True)
    with pytest.raises(RuntimeError, match="orthonormal"):  # the quirk is real: SimpleITK refuses the file
        sitk.ReadImage(str(src / "AbdomenCT-1K-ImagePart1" / "Case_00002_0000.nii.gz"))
    out = convert_abdomenct1k_dataset(src, tmp_path / "raw", 25, strict=True)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"abdomenct1k_0000{i}.nii.gz" for i in (1, 2, 3)]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "abdomenct1k_00002.nii.gz")))
    truth = PhantomSettings("abdomen", SPACING, seed=4).make(1).organ_labels()
    assert np.array_equal(labels, np.where(np.isin(truth, [1, 4, 7, 8]), truth, 0))
    record = json.loads((out / "annotations" / "abdomenct1k_00002.json").read_text())
    fallback = record["quirks"]["image_read_with_nibabel"]
    assert fallback["shear_rad"] == pytest.approx(2e-3, rel=0.01)  # the phantom's shear, measured back
    assert fallback["direction_correction_rad"] == pytest.approx(1e-3, rel=0.01)  # polar decomposition: half
    assert "label map" in record["quirks"]["masks_read_with_nibabel"]
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["quirks"]["image_read_with_nibabel"] == ["abdomenct1k_00002"]
    assert list(summary["unlabelled_images"]) == ["Case_00004"]


def test_known_bad_cases_are_left_out_or_grouped(tmp_path):
    src = tmp_path / "abd"
    generate_dataset("abdomenct1k", str(src), 2, "abdomen", SPACING, seed=4, progress=False)
    for old, new in (("00001", "00078"), ("00002", "00297")):  # a LiTS 1-mm case and one of the duplicates
        for path in src.rglob(f"Case_{old}*.nii.gz"):
            path.rename(path.with_name(path.name.replace(old, new)))
    out = convert_abdomenct1k_dataset(src, tmp_path / "raw", 26)
    assert [p.name for p in (out / "labelsTr").iterdir()] == ["abdomenct1k_00297.nii.gz"]
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert "identity affine" in summary["known_bad_left_out"]["abdomenct1k_00078"]
    assert summary["quirks"]["known_issue"] == ["abdomenct1k_00297"]
    record = json.loads((out / "annotations" / "abdomenct1k_00297.json").read_text())
    assert record["fold_group"] == "LiTS liver_74" and "issue #28" in record["known_issue"]
    out = convert_abdomenct1k_dataset(src, tmp_path / "raw", 26, keep_known_bad=True)
    assert (out / "labelsTr" / "abdomenct1k_00078.nii.gz").is_file()
    assert "identity affine" in json.loads((out / "annotations" / "abdomenct1k_00078.json").read_text())["known_issue"]
