"""DICOM CT series written from the real CT: found, ordered, checked and predicted as their NIfTI twin."""

import locale
import random
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.dicom_series import SeriesVolume, find_dicom_series, read_dicom_series


def write_series(ct, folder: Path, uid: str, *, patient: str = "P1", number: str = "3", modality: str = "CT",
                 shuffle: bool = True, skip: tuple[int, ...] = (), tilt_mm: float = 0.0,
                 localizer: bool = False, twice: tuple[int, ...] = (), changed: dict | None = None,
                 compressor: str | None = None) -> None:
    """One file per slice with the tags a scanner writes; file names shuffled against the slice order.

    ``twice``: slices written a second time; ``changed``: {slice: {tag: value}} written over the defaults.
    """
    folder.mkdir(parents=True, exist_ok=True)
    slices = [i for i in range(ct.GetDepth()) if i not in skip] + list(twice)
    names = list(range(len(slices)))
    if shuffle:
        random.Random(uid).shuffle(names)
    current_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale (ASCII) process-wide
    try:
        _write_slices(ct, folder, uid, patient, number, modality, slices, names, tilt_mm, localizer, changed or {},
                      compressor)
    finally:
        locale.setlocale(locale.LC_ALL, current_locale)


def _write_slices(ct, folder, uid, patient, number, modality, slices, names, tilt_mm, localizer, changed,
                  compressor) -> None:
    d = ct.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # no file extension, as PACS exports name them
    writer.KeepOriginalImageUIDOn()
    if compressor:
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
    for name, i in zip(names, slices):
        image = ct[:, :, i:i + 1]
        x, y, z = ct.TransformIndexToPhysicalPoint((0, 0, i))
        tags = {"0008|0060": modality, "0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
                "0010|0020": patient, "0020|0011": number, "0020|0037": orientation,
                "0020|0052": "1.2.826.0.1.3680043.2.1125.8", "0018|0050": f"{ct.GetSpacing()[2]:.2f}",
                "0020|0032": f"{x + tilt_mm * i:.6f}\\{y:.6f}\\{z:.6f}",
                "0020|0013": str(len(slices) - i),  # InstanceNumber against the order: must not be used
                "0008|0008": "ORIGINAL\\PRIMARY\\" + ("LOCALIZER" if localizer else "AXIAL")}
        for key, value in {**tags, **changed.get(i, {})}.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{uid.rsplit('.', 1)[-1]}_{name:04d}"))
        writer.Execute(image)


def test_series_in_sub_folders_and_mixed_are_found_ordered_and_read_exactly(real_ct_small, tmp_path):
    write_series(real_ct_small, tmp_path / "in" / "abdomen", "1.2.3.1")
    write_series(real_ct_small, tmp_path / "in" / "mixed", "1.2.3.2", patient="P7", number="5")
    write_series(real_ct_small[:, :, 5:20], tmp_path / "in" / "mixed", "1.2.3.3", patient="P7", number="6")
    write_series(real_ct_small[:, :, :4], tmp_path / "in" / "mixed", "1.2.3.4", number="1", localizer=True)
    (tmp_path / "in" / "notes.txt").write_text("not a DICOM file")
    series = find_dicom_series(tmp_path / "in")
    assert sorted(series) == ["P1_1", "P7_5", "P7_6", "abdomen"]
    assert series["P1_1"].error == "DICOM series P1_1 (1.2.3.4): only localizer images"
    for name, expected in (("abdomen", real_ct_small), ("P7_5", real_ct_small), ("P7_6", real_ct_small[:, :, 5:20])):
        assert series[name].error is None
        image = read_dicom_series(series[name])
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-3)
        np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-5)


@pytest.mark.parametrize("problem, message", [
    ({"skip": (12,)}, r"uneven slice spacing — a gap of 6.00 mm .* where the series steps 3.00 mm"),
    ({"modality": "MR"}, r"modality 'MR', not CT; refused"),
    ({"tilt_mm": 1.0}, r"drift .* mm across the slice plane \(gantry tilt"),
    ({"twice": (7,)}, r"two slices at the same position"),
    ({"changed": {9: {"0020|0037": "-1\\0\\0\\0\\-0.995037\\0.0995037"}}}, r"ImageOrientationPatient changes"),
    ({"changed": {4: {"0018|0050": "1.5"}}}, r"slices differ in SliceThickness \(1.5, 3.00\)"),
])
def test_malformed_series_are_one_line_naming_the_series(real_ct_small, tmp_path, problem, message):
    write_series(real_ct_small, tmp_path / "in" / "bad", "1.2.3.9", **problem)
    series = find_dicom_series(tmp_path / "in")["bad"]
    assert series.error is not None and series.error.startswith("DICOM series bad (1.2.3.9): ")
    assert "\n" not in series.error
    with pytest.raises(ValueError, match=message):
        read_dicom_series(series)


def test_series_volume_reads_only_the_slices_indexed(real_ct_small, tmp_path):
    write_series(real_ct_small, tmp_path / "in" / "ct", "1.2.3.1")
    volume = SeriesVolume(find_dicom_series(tmp_path / "in")["ct"])
    array = sitk.GetArrayFromImage(real_ct_small)
    assert volume.shape == array.shape and volume.dtype == np.int16
    assert volume.GetSize() == real_ct_small.GetSize()
    np.testing.assert_allclose(volume.GetSpacing(), real_ct_small.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(volume.GetOrigin(), real_ct_small.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(volume.GetDirection(), real_ct_small.GetDirection(), atol=1e-5)
    for index in [(slice(3, 9),), (slice(0, 30, 4), slice(None, None, 2), slice(5, 40, 3)), (slice(20, 20),),
                  (slice(25, 40), slice(10, 20))]:
        assert np.array_equal(volume[index], array[index]), index
    read = []
    original = volume._read
    volume._read = lambda files: (read.append(len(files)), original(files))[1]
    volume.piece = 4
    assert np.array_equal(volume[4:14], array[4:14])
    assert read == [4, 4, 2]


def test_same_folder_names_of_two_patients_become_two_cases(real_ct_small, tmp_path):
    write_series(real_ct_small, tmp_path / "in" / "patA" / "CT", "1.2.3.11", patient="A")
    write_series(real_ct_small[:, :, 2:12], tmp_path / "in" / "patB" / "CT", "1.2.3.12", patient="B")
    series = find_dicom_series(tmp_path / "in")
    assert sorted(series) == ["CT", "CT_1.2.3.12"]
    assert series["CT_1.2.3.12"].notes == ["DICOM series 1.2.3.12: named 'CT_1.2.3.12' (its first name was taken)"]
    assert SeriesVolume(series["CT_1.2.3.12"]).shape[0] == 10


@pytest.mark.parametrize("body_crop", [False, True], ids=["every tile", "body crop (the command's default)"])
def test_dicom_input_gives_the_labels_of_the_same_scan_as_nifti(real_ct_small, tmp_path, monkeypatch, body_crop):
    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import predict_folder
    from tests.inference.standin import standin_plans, standin_predictor

    write_series(real_ct_small, tmp_path / "dicom" / "abdomen", "1.2.3.1")
    write_series(real_ct_small, tmp_path / "dicom" / "abdomen_mr", "1.2.3.5", modality="MR")
    (tmp_path / "nifti").mkdir()
    sitk.WriteImage(real_ct_small, str(tmp_path / "nifti" / "abdomen_0000.nii.gz"))
    # at the model's spacing: a chunk reads its own slices only (resampling would add the spline's margins)
    chunked = ChunkedPredictor(standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(8, 16, 16))),
                               ChunkSettings(chunk_mm=24), BodyCropSettings() if body_crop else None)
    read = []
    original = SeriesVolume.__getitem__
    monkeypatch.setattr(SeriesVolume, "__getitem__", lambda self, index: (read.append(original(self, index)),
                                                                          read[-1])[1])
    summary = predict_folder(chunked, tmp_path / "dicom", tmp_path / "out_dicom", progress=False)
    # slab by slab, never whole: the body mask alone reads every slice, once, subsampled to 4 mm where it can
    whole = [block for block in read if len(block) == real_ct_small.GetDepth()]
    assert read and len(whole) == body_crop and len(read) > 1 + body_crop
    assert summary["predicted"] == ["abdomen"] and "not CT; refused" in summary["failed"]["abdomen_mr"]
    predict_folder(chunked, tmp_path / "nifti", tmp_path / "out_nifti", progress=False)
    from_dicom = sitk.ReadImage(str(tmp_path / "out_dicom" / "abdomen.nii.gz"))
    from_nifti = sitk.ReadImage(str(tmp_path / "out_nifti" / "abdomen.nii.gz"))
    assert len(np.unique(sitk.GetArrayViewFromImage(from_nifti))) > 1
    assert np.array_equal(sitk.GetArrayFromImage(from_dicom), sitk.GetArrayFromImage(from_nifti))
    np.testing.assert_allclose(from_dicom.GetOrigin(), from_nifti.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(from_dicom.GetDirection(), from_nifti.GetDirection(), atol=1e-5)


def test_compressed_series_are_read_and_undecodable_ones_named(real_ct_small, tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate

    write_series(real_ct_small, tmp_path / "j2k", "1.2.3.1", compressor="JPEG2000")
    write_series(real_ct_small, tmp_path / "mpeg", "1.2.3.2", shuffle=False)
    ds = pydicom.dcmread(next(iter(sorted((tmp_path / "j2k").iterdir()))))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    broken = sorted((tmp_path / "mpeg").iterdir())[5]
    ds = pydicom.dcmread(broken)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: not an image codec GDCM has
    ds.PixelData = encapsulate([b"\x00\x01" * 100])
    ds["PixelData"].VR = "OB"
    ds.save_as(broken, enforce_file_format=True)
    series = find_dicom_series(tmp_path)
    assert np.array_equal(SeriesVolume(series["j2k"])[:], sitk.GetArrayFromImage(real_ct_small))
    with pytest.raises(ValueError, match=r"^DICOM series mpeg \(1.2.3.2\): cannot be read .* compressed transfer "
                                         r"syntax GDCM cannot decode\?$"):
        SeriesVolume(series["mpeg"])[:]
