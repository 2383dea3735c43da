"""Tolerant NIfTI reading (nibabel fallback for headers SimpleITK refuses) and the geometry tolerance."""

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.io import (
    conform_geometry,
    orthonormal_direction,
    read_image_tolerant,
    read_nifti_with_nibabel,
)


def _write_sform_only(path, shear, data=None, affine=None):
    if affine is None:
        affine = np.diag([-0.8, -0.8, 1.5, 1.0])
        affine[:3, 3] = [100.0, 120.0, -300.0]
    affine = affine.copy()
    affine[:3, 1] += shear * np.linalg.norm(affine[:3, 1]) * affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    data = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10) if data is None else data
    nii = nibabel.Nifti1Image(data, affine)
    nii.set_qform(None, code=0)
    nii.set_sform(affine, code=1)
    nibabel.save(nii, str(path))
    return data


def test_fallback_matches_simpleitk_where_simpleitk_reads_the_file(tmp_path):
    """At 1e-4 rad SimpleITK still reads the file: the nibabel path must give the same voxels and geometry."""
    rotation = np.eye(4)
    rotation[:3, :3] = np.array(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3).GetMatrix()).reshape(3, 3)
    affine = rotation @ np.diag([0.7, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-40.0, 25.0, 700.0]
    _write_sform_only(tmp_path / "a.nii.gz", 1e-4, affine=affine)
    reference = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    image, record = read_nifti_with_nibabel(tmp_path / "a.nii.gz")
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))
    assert image.GetPixelID() == reference.GetPixelID()
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-4)
    assert record["shear_rad"] == pytest.approx(1e-4, rel=0.01)
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3) @ np.array(image.GetDirection()).reshape(3, 3).T,
                       np.eye(3), atol=1e-12)  # the result is orthonormal


def test_read_image_tolerant_falls_back_only_for_the_orthonormal_refusal(tmp_path):
    data = _write_sform_only(tmp_path / "sheared.nii.gz", 2e-3)
    image, record = read_image_tolerant(tmp_path / "sheared.nii.gz", "case X: image")
    assert record["reader"] == "nibabel" and record["direction_correction_rad"] == pytest.approx(1e-3, rel=0.01)
    assert np.array_equal(sitk.GetArrayFromImage(image), data.transpose(2, 1, 0))
    assert image.GetOrigin() == pytest.approx((-100.0, -120.0, -300.0))  # RAS affine -> LPS origin
    sitk.WriteImage(image, str(tmp_path / "plain.nii.gz"))
    assert read_image_tolerant(tmp_path / "plain.nii.gz")[1] is None
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="case Y: image .*broken.nii.gz cannot be read") as error:
        read_image_tolerant(tmp_path / "broken.nii.gz", "case Y: image")
    assert "nibabel" not in str(error.value)  # only SimpleITK's orthonormality refusal goes to nibabel
    _write_sform_only(tmp_path / "skewed.nii.gz", 0.2)
    with pytest.raises(ValueError, match=r"sheared by 0.19\d* rad; .* turn an axis by 0.09\d* rad, beyond the 0.01"):
        read_image_tolerant(tmp_path / "skewed.nii.gz")


def test_orthonormal_direction_is_the_polar_factor():
    matrix = np.array([[1.0, 2e-3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    nearest, angle = orthonormal_direction(matrix)
    assert np.allclose(nearest @ nearest.T, np.eye(3)) and angle == pytest.approx(1e-3, rel=1e-3)
    assert orthonormal_direction(np.eye(3))[1] == 0.0


def _pair(origin_shift_mm=(0.0, 0.0, 0.0), rotation=0.0, spacing=(1.0, 1.0, 2.0)):
    image = sitk.Image(10, 12, 8, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((5.0, -3.0, 40.0))
    mask = sitk.Image(10, 12, 8, sitk.sitkUInt8)
    mask.SetSpacing(spacing)
    mask.SetOrigin(tuple(np.add(image.GetOrigin(), origin_shift_mm)))
    c, s = np.cos(rotation), np.sin(rotation)
    mask.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return mask, image


def test_conform_geometry_within_half_a_voxel_and_1e_3_rad():
    mask, image = _pair()
    assert conform_geometry(mask, image, "m")[1] is None
    mask, image = _pair(origin_shift_mm=(0.0, 0.0, 0.9), rotation=5e-4)  # 0.45 of a 2-mm voxel
    conformed, correction = conform_geometry(mask, image, "m")
    assert correction == {"origin_shift_voxels": 0.45, "direction_rad": 0.0005}
    assert conformed.GetOrigin() == image.GetOrigin() and conformed.GetDirection() == image.GetDirection()
    for bad, reason in ((dict(origin_shift_mm=(0.6, 0.0, 0.0)), "by more than 0.5 voxel"),
                        (dict(rotation=2e-3), "by more than 0.5 voxel of origin or 0.001 rad"),
                        (dict(spacing=(1.0, 1.0, 2.01)), "in spacing")):
        mask, image = _pair(**bad)
        with pytest.raises(ValueError, match=f"case 7: mask liver differs in geometry from its image {reason}.*"
                                             r"spacing .* origin .* direction .* vs image size \(10, 12, 8\)"):
            conform_geometry(mask, image, "case 7: mask liver")


def test_conform_geometry_measures_the_shift_along_the_voxel_axes():
    image = sitk.Image(10, 12, 8, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetDirection((0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0))  # index z runs along world x
    mask = sitk.Image(10, 12, 8, sitk.sitkUInt8)
    mask.CopyInformation(image)
    mask.SetOrigin((0.9, 0.0, 0.0))  # 0.9 mm along world x: 0.45 of a 2-mm voxel
    assert conform_geometry(mask, image, "m")[1] == {"origin_shift_voxels": 0.45, "direction_rad": 0.0}


@pytest.mark.parametrize("ending", [".nii.gz", ".mha", ".nrrd"])
def test_non_finite_voxels_are_counted_in_every_format(tmp_path, ending):
    from nnunet_ctorg.io import count_non_finite

    array = np.zeros((20, 30, 40), np.float32)
    array[1, 2, 3], array[4, 5, 6], array[7, 8, 9] = np.nan, np.inf, -np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"ct{ending}"))
    assert count_non_finite(tmp_path / f"ct{ending}") == 3


def test_nibabel_fallback_inflates_in_one_call_with_nibabels_voxels(tmp_path):
    """The one-call inflate gives what nibabel.load gives: types, byte order, scaling, NIfTI-2, several gzip
    members, uncompressed files; a damaged file is one clear error: a truncated one says so."""
    import gzip

    from nnunet_ctorg.io import _nifti_affine_and_voxels

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, (7, 8, 9)).astype(np.int16)
    affine = np.diag([-0.8, -0.8, 1.5, 1.0])
    affine[:3, 3] = [100.0, 120.0, -300.0]
    files = {}
    files["int16.nii.gz"] = nibabel.Nifti1Image(data, affine)
    files["big_endian.nii.gz"] = nibabel.Nifti1Image(data.astype(">i2"), affine)
    files["uint8.nii.gz"] = nibabel.Nifti1Image((data > 0).astype(np.uint8), affine)
    scaled = nibabel.Nifti1Image(data, affine)
    scaled.header.set_slope_inter(0.5, -1024.0)
    files["scaled.nii.gz"] = scaled
    files["nifti2.nii.gz"] = nibabel.Nifti2Image(data.astype(np.float32) / 3, affine)
    files["plain.nii"] = nibabel.Nifti1Image(data, affine)
    for name, image in files.items():
        nibabel.save(image, str(tmp_path / name))
    whole = gzip.decompress((tmp_path / "int16.nii.gz").read_bytes())
    half = len(whole) // 2  # two gzip members, as bgzip writes
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(whole[:half]) + gzip.compress(whole[half:]))
    for name in [*files, "members.nii.gz"]:
        reference = nibabel.load(str(tmp_path / name))
        affine_read, voxels = _nifti_affine_and_voxels(tmp_path / name)
        expected = np.asanyarray(reference.dataobj)
        assert voxels.dtype == expected.dtype and np.array_equal(voxels, expected), name
        assert np.array_equal(affine_read, reference.affine), name
    assert _nifti_affine_and_voxels(tmp_path / "scaled.nii.gz")[1].dtype == np.float64  # nibabel's scaling
    packed = (tmp_path / "int16.nii.gz").read_bytes()
    flipped = bytearray(packed)
    flipped[-20] ^= 0xFF  # in the voxels, the size kept: only the one-call inflate's CRC check sees it
    for damage, content in (("truncated", packed[: len(packed) // 2]), ("flipped", bytes(flipped)),
                            ("not_nifti", gzip.compress(b"x" * 400)), ("not_gzip", b"\x1f\x8b garbage")):
        (tmp_path / f"{damage}.nii.gz").write_bytes(content)
        problem = "is truncated or corrupt" if damage in ("truncated", "flipped") else "cannot be read by SimpleITK nor"
        with pytest.raises(ValueError, match=f"^case Z: image .*{damage}.nii.gz {problem}"):
            read_nifti_with_nibabel(tmp_path / f"{damage}.nii.gz", "case Z: image")


# --- truncated NIfTI files: SimpleITK 2.5.7 reads them without an error, the missing voxels 0


def _real_ct_variants(real_ct_dir, tmp_path):
    """The real CT as a ``.nii.gz`` and a ``.nii``, and its uncompressed bytes."""
    import gzip

    packed = (real_ct_dir / "example_ct.nii.gz").read_bytes()
    raw = gzip.decompress(packed)
    (tmp_path / "ct.nii").write_bytes(raw)
    return packed, raw


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_truncated_real_ct_is_one_clear_error_in_every_reader(real_ct_dir, tmp_path, ending):
    from nnunet_ctorg.io import read_ct, read_ct_tolerant, read_image

    packed, raw = _real_ct_variants(real_ct_dir, tmp_path)
    whole = packed if ending == ".nii.gz" else raw
    path = tmp_path / f"cut{ending}"
    path.write_bytes(whole[: len(whole) * 6 // 10])  # a partial download
    silently = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # why the check exists: no error from SimpleITK
    assert silently.shape == (112, 101, 122) and np.count_nonzero(silently == 0) > 500_000
    problem = "the gzip stream ends early: " if ending == ".nii.gz" else r"3312364 bytes, "
    reads = {"read_image": lambda: read_image(path, "case T: image"),
             "read_ct": lambda: read_ct(path, "case T"),
             "read_ct_tolerant": lambda: read_ct_tolerant(path, "case T"),
             "read_image_tolerant": lambda: read_image_tolerant(path, "case T: image"),
             "read_nifti_with_nibabel": lambda: read_nifti_with_nibabel(path, "case T: image")}
    for name, read in reads.items():
        with pytest.raises(ValueError) as error:
            read()
        message = str(error.value)
        assert message.startswith(f"case T: image {path} is truncated or corrupt ({problem}"), (name, message)
        assert message.endswith("its NIfTI header describes 5520608)") and "\n" not in message, (name, message)


def test_damaged_gzip_streams_and_valid_several_member_ones(real_ct_dir, tmp_path):
    """Several gzip members (bgzip, pigz), zero padding, trailing bytes: read as the original. A stream cut
    anywhere, even in its 8-byte trailer, or a complete stream of too few bytes: the clear error."""
    import gzip

    from nnunet_ctorg.io import check_nifti_complete, read_image

    packed, raw = _real_ct_variants(real_ct_dir, tmp_path)
    reference = sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"))
    third = len(raw) // 3
    members = gzip.compress(raw[:third]) + gzip.compress(raw[third:2 * third]) + gzip.compress(raw[2 * third:])
    good = {"members": members, "padded": members + bytes(100), "trailing": packed + b"not gzip"}
    for name, content in good.items():
        (tmp_path / f"{name}.nii.gz").write_bytes(content)
        assert check_nifti_complete(tmp_path / f"{name}.nii.gz") == len(raw), name
        image = read_image(tmp_path / f"{name}.nii.gz")
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference)), name
        assert image.GetOrigin() == reference.GetOrigin() and image.GetSpacing() == reference.GetSpacing(), name
        voxels = sitk.GetArrayFromImage(read_nifti_with_nibabel(tmp_path / f"{name}.nii.gz")[0])
        assert np.array_equal(voxels, sitk.GetArrayFromImage(reference)), name
    bad = {"members_cut": (members[:-len(gzip.compress(raw[2 * third:])) // 2], "the gzip stream ends early"),
           "trailer_cut": (packed[:-3], "the gzip stream ends early: 5520608 bytes"),
           "header_only": (packed[:300], "the gzip stream ends early"),
           "short_stream": (gzip.compress(raw[:-1]), "the gzip stream is short: 5520607 bytes"),
           "damaged": (packed[:5000] + bytes(10_000) + packed[15_000:-4] + b"\0\0\0\0", "damaged gzip data: Error -3")}
    for name, (content, problem) in bad.items():
        path = tmp_path / f"{name}.nii.gz"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"^case B: mask liver {path} is truncated or corrupt \\({problem}"):
            read_image(path, "case B: mask liver")
    plain = tmp_path / "ct.nii"
    assert check_nifti_complete(plain) == len(raw) and read_image(plain).GetSize() == reference.GetSize()


def test_header_parse_gives_the_size_nibabel_writes(tmp_path):
    """NIfTI-1 and -2, both byte orders, extensions (vox_offset beyond them), a 4-D image, .nii and .nii.gz: the
    size the header describes is the file's inflated size; other formats are left alone."""
    import gzip

    from nnunet_ctorg.io import check_nifti_complete, read_image

    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    extended = nibabel.Nifti1Image(data, np.eye(4))
    extended.header.extensions.append(nibabel.nifti1.Nifti1Extension("comment", b"x" * 1000))
    images = {"n1.nii.gz": nibabel.Nifti1Image(data, np.eye(4)),
              "big_endian.nii.gz": nibabel.Nifti1Image(data.astype(">f8"), np.eye(4)),
              "n2.nii.gz": nibabel.Nifti2Image(data.astype(np.float32), np.eye(4)),
              "n2_big.nii": nibabel.Nifti2Image(data.astype(">i4"), np.eye(4)),
              "extension.nii.gz": extended,
              "4d.nii.gz": nibabel.Nifti1Image(np.stack([data, data]).transpose(1, 2, 3, 0), np.eye(4)),
              "rgb.nii": nibabel.Nifti1Image(np.zeros((4, 3, 2), [("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4))}
    for name, image in images.items():
        path = tmp_path / name
        nibabel.save(image, str(path))
        content = path.read_bytes()
        size = len(gzip.decompress(content) if name.endswith(".gz") else content)
        assert check_nifti_complete(path) == size, name
        if name == "extension.nii.gz":
            assert nibabel.load(str(path)).dataobj.offset >= 352 + 1000  # the data lie beyond the extension
        path.write_bytes(content[:-1] if name.endswith(".nii") else gzip.compress(gzip.decompress(content)[:-1]))
        with pytest.raises(ValueError, match=f"image {path} is truncated or corrupt"):
            check_nifti_complete(path)
    for ending in (".mha", ".nrrd"):
        sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / f"a{ending}"))
        assert check_nifti_complete(tmp_path / f"a{ending}") is None
        assert read_image(tmp_path / f"a{ending}").GetSize() == (7, 6, 5)
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"not a header" * 100))
    assert check_nifti_complete(tmp_path / "text.nii.gz") is None  # left to the reader's own error


def test_a_complete_file_costs_a_header_read_not_an_inflate(real_ct_dir, tmp_path, monkeypatch):
    """A single-member file whose gzip trailer agrees with its header: only the header is inflated (544 bytes,
    the largest NIfTI header); several members: the whole stream once, counted and dropped."""
    import gzip

    from nnunet_ctorg import io

    inflated = []
    original = io._inflated_chunks

    def counting(*args, **kwargs):
        for piece in original(*args, **kwargs):
            inflated.append(len(piece))
            yield piece

    monkeypatch.setattr(io, "_inflated_chunks", counting)
    io.read_image(real_ct_dir / "example_ct.nii.gz")
    assert sum(inflated) == 544
    inflated.clear()
    io.read_nifti_with_nibabel(real_ct_dir / "example_ct.nii.gz")
    assert sum(inflated) == 544
    raw = gzip.decompress((real_ct_dir / "example_ct.nii.gz").read_bytes())
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    inflated.clear()
    io.read_image(tmp_path / "two.nii.gz")
    assert sum(inflated) == 544 + len(raw) and max(inflated) <= io._INFLATE_CHUNK
