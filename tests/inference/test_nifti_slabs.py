"""NIfTI CTs read and label images written slab by slab: against SimpleITK's own reader and writer."""

import gzip
import struct

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.nifti_slabs import NiftiLabelWriter, NiftiVolume


def _scaled_nifti(path, values: np.ndarray, slope: float, inter: float, affine=None) -> None:
    """(z, y, x) ``values`` stored as int16 with scl_slope/scl_inter, as many scanners' exports are."""
    image = nibabel.Nifti1Image(values.transpose(2, 1, 0).astype(np.int16), np.diag([-0.8, -0.8, 1.5, 1])
                                if affine is None else affine)
    image.header.set_slope_inter(slope or 1.0, inter)
    image.header.set_qform(image.affine, code=1)
    nibabel.save(image, str(path))
    if slope == 0:  # nibabel refuses to write it; some writers do: patch scl_slope (bytes 112-115)
        opener = gzip if str(path).endswith(".gz") else None
        data = bytearray(gzip.decompress(path.read_bytes()) if opener else path.read_bytes())
        data[112:116] = struct.pack("<f", 0.0)
        path.write_bytes(gzip.compress(bytes(data)) if opener else bytes(data))


@pytest.mark.parametrize("name", ["example_ct.nii.gz", "example_ct_sm.nii.gz"])
def test_volume_equals_simpleitk_and_reads_any_slab(real_ct_dir, tmp_path, name):
    from nnunet_ctorg.inference.folder_prediction import read_ct_compact

    expected = read_ct_compact(real_ct_dir / name, name)  # int32 file, cast to int16
    with NiftiVolume(real_ct_dir / name, name, tmp_path) as volume:
        assert volume.dtype == np.int16 and volume.shape == expected.GetSize()[::-1]
        assert volume.GetOrigin() == expected.GetOrigin() and volume.GetSpacing() == expected.GetSpacing()
        assert volume.GetDirection() == expected.GetDirection()
        array = sitk.GetArrayViewFromImage(expected)
        assert np.array_equal(volume[:], array)
        for index in [(slice(3, 9),), (slice(5, 6), slice(10, 40), slice(2, None)), (slice(-4, None),)]:
            assert np.array_equal(volume[index], array[index])
        assert not list(tmp_path.iterdir())  # the temporary slabs are an unlinked file


def test_scaled_integers_become_int16_and_fractions_float32_as_simpleitk_reads_them(tmp_path):
    values = np.random.default_rng(0).integers(0, 3000, (20, 12, 14))
    _scaled_nifti(tmp_path / "whole.nii.gz", values, 1.0, -1024.0)
    _scaled_nifti(tmp_path / "half.nii", values, 0.5, -1024.0)
    _scaled_nifti(tmp_path / "slope0.nii.gz", values, 0.0, -1024.0)  # ITK: slope 1, intercept still added
    _scaled_nifti(tmp_path / "wide.nii.gz", values, 20.0, 0.0)  # whole values beyond int16: stay float
    nibabel.save(nibabel.Nifti1Image(values.transpose(2, 1, 0)[..., None].astype(np.int16), np.eye(4)),
                 str(tmp_path / "four_d.nii.gz"))  # x * y * z * 1, which SimpleITK reads as 3-D
    for name, dtype in (("whole.nii.gz", np.int16), ("half.nii", np.float32), ("slope0.nii.gz", np.int16),
                        ("wide.nii.gz", np.float32), ("four_d.nii.gz", np.int16)):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name)))
        with NiftiVolume(tmp_path / name, name, tmp_path) as volume:
            assert volume.dtype == dtype, name
            assert np.array_equal(volume[:], reference.reshape(volume.shape)), name


def test_nan_and_truncated_files_are_named_errors(tmp_path):
    values = np.zeros((20, 12, 14), np.float32)
    values[9, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(ValueError, match=r"case7: the CT contains NaN or infinite values \(at least 1 in slices "
                                         r"0..15"):
        NiftiVolume(tmp_path / "nan.nii.gz", "case7", tmp_path)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros_like(values)), str(tmp_path / "cut.nii.gz"))
    data = gzip.decompress((tmp_path / "cut.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(ValueError, match=r"case8: cut.nii.gz is truncated \(slices from 16 missing\)"):
        NiftiVolume(tmp_path / "cut.nii.gz", "case8", tmp_path)
    (tmp_path / "plain.nii.gz").write_bytes(data)  # named .gz, not compressed
    with pytest.raises(ValueError, match=r"^case9: plain.nii.gz cannot be read"):
        NiftiVolume(tmp_path / "plain.nii.gz", "case9", tmp_path)
    compressed = bytearray(gzip.compress(data))
    compressed[-8] ^= 0xFF  # gzip's CRC no longer matches
    (tmp_path / "crc.nii.gz").write_bytes(bytes(compressed))
    with pytest.raises(ValueError, match=r"^case10: crc.nii.gz cannot be read"):
        NiftiVolume(tmp_path / "crc.nii.gz", "case10", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crc.nii.gz", "cut.nii.gz", "nan.nii.gz", "plain.nii.gz"]


@pytest.mark.parametrize("direction", ["real", "oblique"])
def test_label_writer_gives_the_file_simpleitk_writes(real_ct_dir, tmp_path, direction):
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))
    if direction == "oblique":
        rotation = sitk.VersorTransform((0.2, 0.1, 0.9), 0.4).GetMatrix()
        ct.SetDirection(rotation)
    labels = np.random.default_rng(1).integers(0, 5, ct.GetSize()[::-1]).astype(np.uint8)
    reference = sitk.GetImageFromArray(labels)
    reference.CopyInformation(ct)
    sitk.WriteImage(reference, str(tmp_path / "sitk.nii.gz"))
    writer = NiftiLabelWriter(tmp_path / "slabs.nii.gz", labels.shape, np.uint8, ct.GetOrigin(), ct.GetSpacing(),
                              ct.GetDirection())
    writer[4:10, :, :] = labels[4:10]  # slices 0-3 are background
    writer[10:11, 5:20, 3:] = labels[10:11, 5:20, 3:]  # outside the in-plane box: background
    writer[11:, :, :] = labels[11:]
    with pytest.raises(ValueError, match="slices 5..6 come after slice 29 was written"):
        writer[5:7, :, :] = labels[5:7]
    assert not (tmp_path / "slabs.nii.gz").exists()  # written under a temporary name
    writer.close()
    expected = labels.copy()
    expected[:4] = 0
    expected[10] = 0
    expected[10, 5:20, 3:] = labels[10, 5:20, 3:]
    got, want = sitk.ReadImage(str(tmp_path / "slabs.nii.gz")), sitk.ReadImage(str(tmp_path / "sitk.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(got), expected)
    assert got.GetPixelID() == want.GetPixelID()
    np.testing.assert_allclose(got.GetOrigin(), want.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetSpacing(), want.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(got.GetDirection(), want.GetDirection(), atol=1e-5)
    ours, theirs = nibabel.load(str(tmp_path / "slabs.nii.gz")), nibabel.load(str(tmp_path / "sitk.nii.gz"))
    assert np.array_equal(np.asarray(ours.dataobj).transpose(2, 1, 0), expected)
    for form in ("get_qform", "get_sform"):  # both transforms, as SimpleITK writes them (not only what it reads)
        np.testing.assert_allclose(getattr(ours, form)(), getattr(theirs, form)(), atol=1e-4)


def test_label_writer_clears_outside_the_keep_box_and_abort_leaves_nothing(tmp_path):
    writer = NiftiLabelWriter(tmp_path / "box.nii", (6, 5, 4), np.uint8, (0, 0, 0), (1, 1, 1), np.eye(3).ravel())
    writer.keep_box = (slice(1, 4), slice(1, 3), slice(0, 4))
    writer[0:3, :, :] = np.ones((3, 5, 4), np.uint8)
    writer[3:5, :, :] = np.ones((2, 5, 4), np.uint8)  # slice 5 never written: background
    writer.close()
    expected = np.zeros((6, 5, 4), np.uint8)
    expected[1:4, 1:3] = 1
    assert np.array_equal(np.asarray(nibabel.load(str(tmp_path / "box.nii")).dataobj).transpose(2, 1, 0),
                          expected)  # nibabel, unlike SimpleITK, refuses a file short of its last slices
    writer = NiftiLabelWriter(tmp_path / "gone.nii.gz", (6, 5, 4), np.uint8, (0, 0, 0), (1, 1, 1),
                              np.eye(3).ravel())
    writer[0:2, :, :] = np.ones((2, 5, 4), np.uint8)
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.nii"]


def test_folder_prediction_streams_the_labels_of_the_in_memory_run(real_ct_dir, tmp_path):
    from nnunet_ctorg.inference.body_crop import BodyCropSettings
    from nnunet_ctorg.inference.chunked_predictor import ChunkedPredictor, ChunkSettings
    from nnunet_ctorg.inference.folder_prediction import predict_folder, read_ct_compact
    from tests.inference.standin import standin_plans, standin_predictor

    (tmp_path / "in").mkdir()
    _scaled_nifti(tmp_path / "in" / "scaled_0000.nii.gz",
                  sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))) + 1024, 1.0,
                  -1024.0, affine=np.diag([-3.0, -3.0, 3.0, 1]))
    for body in (None, BodyCropSettings()):
        chunked = ChunkedPredictor(standin_predictor(standin_plans(spacing=(4.0, 5.0, 5.0), patch=(8, 16, 16))),
                                   ChunkSettings(chunk_mm=24), body)
        out = tmp_path / f"out_{body is not None}"
        summary = predict_folder(chunked, tmp_path / "in", out, progress=False)
        assert summary["predicted"] == ["scaled"] and len(chunked.last_chunks) > 2
        expected = chunked.predict_image(read_ct_compact(tmp_path / "in" / "scaled_0000.nii.gz", "scaled"))
        assert len(np.unique(expected)) > 2
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "scaled.nii.gz"))), expected)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # temporaries removed
