"""DICOM SEG output: read back with highdicom, its segments, references and geometry against the NIfTI labels."""

import numpy as np
import pytest
import SimpleITK as sitk

from tests.inference.test_dicom_series import write_series


def _seg_labels_on_grid(seg, reference) -> tuple[np.ndarray, np.ndarray]:
    """(labels of the SEG's volume, labels of ``reference`` at the same physical points), voxel by voxel."""
    volume = seg.get_volume(combine_segments=True)
    k, i, j = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    points = volume.affine @ np.stack([k.ravel(), i.ravel(), j.ravel(), np.ones(k.size)])
    index = np.array([reference.TransformPhysicalPointToContinuousIndex(p) for p in points[:3].T])
    rounded = np.round(index).astype(int)
    assert np.abs(index - rounded).max() < 1e-3  # the SEG's voxels are the series' voxels
    expected = sitk.GetArrayViewFromImage(reference)[rounded[:, 2], rounded[:, 1], rounded[:, 0]]
    return volume.array.ravel(), expected


def test_dicom_seg_reads_back_with_the_segments_and_geometry_of_the_labels(real_ct_small, tmp_path):
    import highdicom as hd

    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import predict_folder
    from tests.inference.standin import standin_plans, standin_predictor

    write_series(real_ct_small, tmp_path / "dicom" / "abdomen", "1.2.3.1")
    chunked = ChunkedPredictor(standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(8, 16, 16))),
                               ChunkSettings(chunk_mm=24))
    summary = predict_folder(chunked, tmp_path / "dicom", tmp_path / "out", progress=False, output_type="both")
    assert summary["predicted"] == ["abdomen"]
    labels = sitk.ReadImage(str(tmp_path / "out" / "abdomen.nii.gz"))
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == {0, 1, 2, 3}

    seg = hd.seg.segread(tmp_path / "out" / "abdomen.dcm")
    assert seg.SegmentationType == "BINARY"
    names = [seg.get_segment_description(i).segment_label for i in range(1, seg.number_of_segments + 1)]
    assert names == ["liver", "lungs", "bones"]
    liver, bones = seg.get_segment_description(1), seg.get_segment_description(3)
    assert (liver.segmented_property_type.value, liver.segmented_property_type.scheme_designator) == ("10200004",
                                                                                                       "SCT")
    assert bones.segmented_property_type.value == "91723000"  # not a default-scheme name: anatomical structure
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.1"
    assert seg.StudyInstanceUID == "1.2.826.0.1.3680043.2.1125.7" and seg.PatientID == "P1"
    array = sitk.GetArrayViewFromImage(labels)
    non_empty = sum(int(np.any(array[z] == c)) for z in range(array.shape[0]) for c in (1, 2, 3))
    assert seg.NumberOfFrames == non_empty  # one frame per slice and segment, empty ones left out
    assert seg.SeriesDescription == "nnunet-ctorg organs" and seg.ContentCreatorName == "nnunet-ctorg^"
    got, expected = _seg_labels_on_grid(seg, labels)
    assert got.size == labels.GetNumberOfPixels()
    assert np.array_equal(got, expected)


def test_dicom_seg_needs_dicom_input_and_is_resumed_only_when_written(real_ct_small, tmp_path):
    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import predict_folder
    from tests.inference.standin import standin_plans, standin_predictor

    chunked = ChunkedPredictor(standin_predictor(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(8, 16, 16))),
                               ChunkSettings(chunk_mm=None))
    (tmp_path / "nifti").mkdir()
    sitk.WriteImage(real_ct_small, str(tmp_path / "nifti" / "abdomen_0000.nii.gz"))
    with pytest.raises(ValueError, match="--output_type dicom_seg: a DICOM SEG references its source series"):
        predict_folder(chunked, tmp_path / "nifti", tmp_path / "out", progress=False, output_type="dicom_seg")
    no_thickness = {i: {"0018|0050": ""} for i in range(real_ct_small.GetDepth())}  # type 2: may be empty
    write_series(real_ct_small, tmp_path / "dicom" / "abdomen", "1.2.3.1", changed=no_thickness)
    predict_folder(chunked, tmp_path / "dicom", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "abdomen.dcm").exists()
    summary = predict_folder(chunked, tmp_path / "dicom", tmp_path / "out", continue_prediction=True,
                             progress=False, output_type="dicom_seg")
    assert summary["predicted"] == ["abdomen"] and (tmp_path / "out" / "abdomen.dcm").is_file()
    import highdicom as hd

    measures = hd.seg.segread(tmp_path / "out" / "abdomen.dcm").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert float(measures[0].SliceThickness) == pytest.approx(3.0)  # from the positions


def test_dicom_seg_refuses_series_without_frame_of_reference(real_ct_small, tmp_path):
    from nnunet_ctorg.inference.dicom_seg import write_dicom_seg
    from nnunet_ctorg.inference.dicom_series import find_dicom_series

    write_series(real_ct_small, tmp_path / "abdomen", "1.2.3.1", changed={i: {"0020|0052": ""} for i in range(30)})
    files = find_dicom_series(tmp_path)["abdomen"].files
    labels = np.zeros((30, 51, 61), np.uint8)
    with pytest.raises(ValueError, match="abdomen: cannot write a DICOM SEG, the source series has no "
                                         "FrameOfReferenceUID"):
        write_dicom_seg(labels, files, {"background": 0, "liver": 1}, tmp_path / "seg.dcm", "abdomen")
    with pytest.raises(ValueError, match="label ids 1..N"):
        write_dicom_seg(labels, files, {"background": 0, "liver": 2}, tmp_path / "seg.dcm", "abdomen")
    assert not (tmp_path / "seg.dcm").exists()


def test_segments_leave_out_background_and_ignore():
    from nnunet_ctorg.inference.dicom_seg import segment_descriptions

    described = segment_descriptions({"background": 0, "liver": 1, "lungs": 2, "ignore": 3})
    assert [(d.segment_number, d.segment_label) for d in described] == [(1, "liver"), (2, "lungs")]
    assert described[1].segmented_property_type.value == "39607008"  # SNOMED CT lung
