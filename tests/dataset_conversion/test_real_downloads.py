"""The quirks of the real downloads, each on the real CT of ../shared and its TotalSegmentator reference.

Each test lays the real CT out as a download would be (byte-order mark, v1 file set, sheared NIfTI
headers, TCIA's OrganSegmentations/, images without masks, masks a fraction of a voxel off, partly
annotated bone) and checks the converted labels voxel for voxel against the reference.
"""

import csv
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
from nnunet_ctorg.dataset_conversion.merge import merge_datasets
from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset
from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import TOTALSEG_V1_STRUCTURES, TOTALSEG_V2_STRUCTURES
from nnunet_ctorg.phantoms.layouts import V1_FILE_OF, V2_META_COLUMNS, write_sheared_nifti

SCHEME = LabelScheme.load(None)


@pytest.fixture(scope="module")
def real(real_ct_dir):
    names = {int(i): n for i, n in json.loads((real_ct_dir / "example_seg_labels.json").read_text()).items()}
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))
    seg_img = sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz"))
    return ct, sitk.GetArrayFromImage(seg_img), names


def _image(array, reference):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _reference(seg, names, organ, available=TOTALSEG_V2_STRUCTURES):
    structures = SCHEME.totalseg_structures(organ, available)
    return np.isin(seg, [i for i, n in names.items() if n in structures])


def write_totalseg_download(root, real, version="v2", sheared=False, drop=()):
    """The real case as ``s0001`` of a TotalSegmentator download (meta.csv as the release writes it)."""
    ct, seg, names = real
    case = root / "s0001"
    (case / "segmentations").mkdir(parents=True)
    write = write_sheared_nifti if sheared else (lambda image, path: sitk.WriteImage(image, str(path)))
    ids = {n: i for i, n in names.items()}
    for name in TOTALSEG_V2_STRUCTURES if version == "v2" else TOTALSEG_V1_STRUCTURES:
        if name in drop:
            continue
        sources = [s for s in TOTALSEG_V2_STRUCTURES if (s if version == "v2" else V1_FILE_OF.get(s)) == name]
        write(_image(np.isin(seg, [ids[s] for s in sources]).astype(np.uint8), ct),
              case / "segmentations" / f"{name}.nii.gz")
    write(ct, case / "ct.nii.gz")
    columns = V2_META_COLUMNS if version == "v2" else V2_META_COLUMNS[:6]
    text = io.StringIO()
    writer = csv.writer(text, delimiter=";", lineterminator="\n")
    writer.writerow(columns)
    writer.writerow(["s0001", "63", "m", "A", "ct abdomen-pelvis", "train"] + ["x"] * (len(columns) - 6))
    (root / "meta.csv").write_bytes((b"\xef\xbb\xbf" if version == "v2" else b"") + text.getvalue().encode())


def test_v2_0_1_meta_csv_with_byte_order_mark(real, tmp_path, nnunet_env):
    write_totalseg_download(tmp_path / "ts", real)
    out = convert_totalseg_dataset(tmp_path / "ts", nnunet_env / "nnUNet_raw", 60, strict=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz")))
    _, seg, names = real
    for organ in ("liver", "kidneys", "spleen", "pancreas", "lungs", "bone"):
        assert np.array_equal(labels == SCHEME.labels[organ], _reference(seg, names, organ)), organ
    assert json.loads((out / "conversion_summary.json").read_text())["release"] == "v2.0.1"


def test_v1_file_set(real, tmp_path, nnunet_env):
    write_totalseg_download(tmp_path / "ts", real, version="v1")
    out = convert_totalseg_dataset(tmp_path / "ts", nnunet_env / "nnUNet_raw", 61, strict=True)
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["version"] == "v1" and record["missing_masks"] == [] and "quirks" not in record
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz")))
    _, seg, names = real
    for organ in ("liver", "kidneys", "spleen", "pancreas", "lungs", "bone"):
        assert np.array_equal(labels == SCHEME.labels[organ], _reference(seg, names, organ)), organ


def test_sheared_headers_that_simpleitk_refuses(real, tmp_path, nnunet_env):
    write_totalseg_download(tmp_path / "ts", real, sheared=True)
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(tmp_path / "ts" / "s0001" / "ct.nii.gz"))
    out = convert_totalseg_dataset(tmp_path / "ts", nnunet_env / "nnUNet_raw", 62, strict=True)
    ct, seg, names = real
    image = sitk.ReadImage(str(out / "imagesTr" / "totalseg_s0001_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))
    assert np.allclose(image.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetDirection(), ct.GetDirection(), atol=2e-3)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz")))
    for organ in ("liver", "kidneys", "bone"):
        assert np.array_equal(labels == SCHEME.labels[organ], _reference(seg, names, organ)), organ
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["quirks"]["image_read_with_nibabel"]["shear_rad"] == pytest.approx(2e-3, rel=0.01)


def test_ctorg_from_tcia_folder(real, tmp_path):
    ct, seg, names = real
    folder = tmp_path / "CT-ORG" / "OrganSegmentations"
    folder.mkdir(parents=True)
    ctorg = np.zeros(seg.shape, dtype=np.float32)  # CT-ORG stores labels as float32
    for organ, value in (("liver", 1), ("lungs", 3), ("kidneys", 4), ("bone", 5)):
        ctorg[_reference(seg, names, organ)] = value
    sitk.WriteImage(_image(ctorg, ct), str(folder / "labels-40.nii.gz"))
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkFloat32), str(folder / "volume-40.nii.gz"))
    out = convert_ctorg_dataset(tmp_path / "CT-ORG", tmp_path / "raw", 63, strict=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "ctorg_040.nii.gz")))
    assert np.array_equal(labels, ctorg.astype(np.uint8))
    image = sitk.ReadImage(str(out / "imagesTr" / "ctorg_040_0000.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16 and np.array_equal(sitk.GetArrayFromImage(image),
                                                                      sitk.GetArrayFromImage(ct))


def test_abdomenct1k_unlabelled_image_and_sheared_case(real, tmp_path):
    ct, seg, names = real
    root = tmp_path / "AbdomenCT-1K"
    (root / "AbdomenCT-1K-ImagePart1").mkdir(parents=True)
    (root / "Mask").mkdir()
    mask = np.zeros(seg.shape, dtype=np.uint8)
    for organ, value in (("liver", 1), ("kidneys", 2), ("spleen", 3), ("pancreas", 4)):
        mask[_reference(seg, names, organ)] = value
    write_sheared_nifti(ct, root / "AbdomenCT-1K-ImagePart1" / "Case_00001_0000.nii.gz")
    write_sheared_nifti(_image(mask, ct), root / "Mask" / "Case_00001.nii.gz")
    sitk.WriteImage(ct, str(root / "AbdomenCT-1K-ImagePart1" / "Case_01050_0000.nii.gz"))
    out = convert_abdomenct1k_dataset(root, tmp_path / "raw", 64, strict=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "abdomenct1k_00001.nii.gz")))
    assert np.array_equal(labels, SCHEME.lookup_table("abdomenct1k", 4)[mask])
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert list(summary["unlabelled_images"]) == ["Case_01050"] and summary["failed"] == {}
    assert summary["quirks"]["image_read_with_nibabel"] == ["abdomenct1k_00001"]


@pytest.mark.parametrize("shift_voxels,ok", [(0.3, True), (0.7, False)])
def test_mask_a_fraction_of_a_voxel_off(real, tmp_path, shift_voxels, ok):
    ct, seg, names = real
    root = tmp_path / "abd"
    (root / "Images").mkdir(parents=True)
    (root / "Mask").mkdir()
    mask = _image(_reference(seg, names, "liver").astype(np.uint8), ct)
    mask.SetOrigin(tuple(np.array(ct.GetOrigin()) + np.array([0, 0, shift_voxels * ct.GetSpacing()[2]])))
    sitk.WriteImage(ct, str(root / "Images" / "Case_00001_0000.nii.gz"))
    sitk.WriteImage(mask, str(root / "Mask" / "Case_00001.nii.gz"))
    if not ok:
        with pytest.raises(ValueError, match=r"AbdomenCT-1K case 00001: label map differs in geometry from its "
                                             r"image by more than 0.5 voxel .*origin .* vs image size"):
            convert_abdomenct1k_dataset(root, tmp_path / "raw", 65, strict=True)
        return
    out = convert_abdomenct1k_dataset(root, tmp_path / "raw", 65, strict=True)
    label = sitk.ReadImage(str(out / "labelsTr" / "abdomenct1k_00001.nii.gz"))
    assert label.GetOrigin() == ct.GetOrigin()
    record = json.loads((out / "annotations" / "abdomenct1k_00001.json").read_text())
    assert record["quirks"]["geometry_corrected"]["label map"]["origin_shift_voxels"] == pytest.approx(shift_voxels)


def test_unannotated_ribs_become_ignore_not_background(real, tmp_path, nnunet_env):
    """A source that annotates bone in part (here: the ribs left out, as CT-ORG's abdominal training bone) must
    not teach that its unlabelled bone is background."""
    ct, seg, names = real
    ribs = [n for n in TOTALSEG_V2_STRUCTURES if n.startswith("rib_")]
    write_totalseg_download(tmp_path / "ts", real, drop=ribs)
    raw = nnunet_env / "nnUNet_raw"
    convert_totalseg_dataset(tmp_path / "ts", raw, 66, strict=True)
    rib_voxels = np.isin(seg, [i for i, n in names.items() if n in ribs])
    naive = merge_datasets([66], raw, 67, "Naive", "background")
    naive_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(naive / "labelsTr" / "totalseg_s0001.nii.gz")))
    assert np.all(naive_labels[rib_voxels] == 0)  # what the rule prevents: ribs taught as background
    out = merge_datasets([66], raw, 68, "Ignore", "ignore")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "totalseg_s0001.nii.gz")))
    ignore = json.loads((out / "dataset.json").read_text())["labels"]["ignore"]
    assert np.mean(labels[rib_voxels] == ignore) >= 0.95  # 0.97 measured; a plain 200-HU threshold: 0.58
    annotated = naive_labels > 0
    assert np.array_equal(labels[annotated], naive_labels[annotated])  # real labels never change
    hu = sitk.GetArrayFromImage(ct)
    assert hu[labels == ignore].min() >= 0
    soft = (naive_labels == 0) & (hu > -100) & (hu < 100) & ~rib_voxels
    assert np.mean(labels[soft] == ignore) < 0.2  # soft tissue mostly keeps its background label
    record = json.loads((out / "annotations" / "totalseg_s0001.json").read_text())
    assert record["ignored_voxels"]["partial_bone"] == int((labels == ignore).sum())
