"""AbdomenCT-1K conversion: images in part folders paired with masks by case number."""

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
    assert record["annotated"] == [1, 4, 7, 8]


def test_missing_mask_and_bad_values(abdomen_dir, tmp_path):
    (abdomen_dir / "Mask" / "Case_00001.nii.gz").unlink()
    with pytest.raises(ValueError, match="AbdomenCT-1K case 00001: no mask Case_00001.nii.gz"):
        convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 22)
    mask = sitk.ReadImage(str(abdomen_dir / "Mask" / "Case_00002.nii.gz"))
    sitk.WriteImage(mask * 2, str(abdomen_dir / "Mask" / "Case_00002.nii.gz"))
    out = convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 22, strict=False)
    assert [p.name for p in (out / "labelsTr").iterdir()] == ["abdomenct1k_00003.nii.gz"]


def test_2d_image_is_rejected(abdomen_dir, tmp_path):
    image = sitk.ReadImage(str(abdomen_dir / "AbdomenCT-1K-ImagePart3" / "Case_00003_0000.nii.gz"))
    sitk.WriteImage(image[:, :, 5], str(abdomen_dir / "AbdomenCT-1K-ImagePart3" / "Case_00003_0000.nii.gz"))
    with pytest.raises(ValueError, match="AbdomenCT-1K case 00003: the image must be 3-D"):
        convert_abdomenct1k_dataset(abdomen_dir, tmp_path / "raw", 23)
