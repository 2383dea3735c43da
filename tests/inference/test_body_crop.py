"""Body contour, crop and exact uncrop on phantoms and the real CT."""

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ctorg.inference.body_crop import (
    BodyCropSettings,
    BodyRegion,
    body_box,
    body_contour,
    body_crop_box,
    body_region,
    crop_image_to_body,
    image_axes,
    uncrop_image,
)
from nnunet_ctorg.inference.cli import crop_body_main, uncrop_body_main


def test_crop_uncrop_round_trip_keeps_geometry_and_voxels(phantom):
    image = phantom.to_sitk(phantom.ct)
    cropped, box = crop_image_to_body(image)
    assert np.prod(cropped.GetSize()) < 0.8 * np.prod(image.GetSize())
    assert np.allclose(cropped.GetOrigin(), image.TransformIndexToPhysicalPoint([box[2].start, box[1].start,
                                                                                box[0].start]))
    back = uncrop_image(cropped, image, fill=-1024)
    assert back.GetSize() == image.GetSize() and back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    a, b = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(back)
    assert np.array_equal(a[box], b[box])
    assert np.all(b[~_inside(box, b.shape)] == -1024)


def _inside(box, shape):
    m = np.zeros(shape, bool)
    m[box] = True
    return m


def test_table_removed_and_every_organ_voxel_kept_on_a_phantom(phantom):
    spacing = phantom.spacing[::-1]
    mask = body_contour(phantom.ct, spacing)
    assert np.all(mask[phantom.structures > 0])
    dense_outside = (phantom.ct > -300) & ~mask
    assert dense_outside.sum() > 1000  # the table is there and is not body
    ap_rows = np.nonzero(mask.any(axis=(0, 2)))[0]
    table_rows = np.nonzero(dense_outside.any(axis=(0, 2)))[0]
    assert np.median(table_rows) < ap_rows[0] + 5 or np.median(table_rows) > ap_rows[-1] - 5


def test_every_reference_organ_voxel_of_the_real_ct_is_kept(real_ct_dir):
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))
    hu = sitk.GetArrayFromImage(ct)
    mask = body_contour(hu, ct.GetSpacing()[::-1])
    assert np.all(mask[seg > 0])
    assert hu[mask].mean() > -200  # mostly tissue, not air
    cropped, box = crop_image_to_body(ct)
    assert np.count_nonzero(seg[box]) == np.count_nonzero(seg)
    assert (hu[~mask] > -300).sum() > 0  # the table rows are left out of the body


def test_arms_beside_the_trunk_stay_in_a_chunk():
    from nnunet_ctorg.phantoms import generate_phantom

    ph = generate_phantom(seed=2, fov="head_knee", spacing=(4.0, 4.0, 6.0), noise_hu=5)
    from nnunet_ctorg.labels import TOTALSEG_V2_STRUCTURES

    humerus = [TOTALSEG_V2_STRUCTURES.index(n) + 1 for n in ("humerus_left", "humerus_right")]
    arm_slices = np.nonzero(np.isin(ph.structures, humerus).any(axis=(1, 2)))[0]
    chunk = slice(arm_slices[0], arm_slices[0] + 12)  # the lower end of the arms, apart from the trunk
    arms = np.isin(ph.structures[chunk], humerus)
    mask = body_contour(ph.ct[chunk], (6.0, 4.0, 4.0))
    assert np.all(mask[arms])
    trunk_only = body_contour(ph.ct[chunk], (6.0, 4.0, 4.0), settings=BodyCropSettings(min_part_ml=1e9))
    assert not np.all(trunk_only[arms])  # the arms are apart from the trunk here
    from skimage.morphology import convex_hull_image

    gap = [np.count_nonzero(convex_hull_image(m) & ~m) for m in mask]
    assert min(gap) > 50  # the field of view cuts nothing: the air between arms and trunk stays out


def _touches(outside: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.binary_dilation(o) & ~o for o in outside])


def _real_ct_and_organs(real_ct_dir):
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz")))
    return sitk.GetArrayFromImage(ct), seg, ct.GetSpacing()[::-1]


@pytest.mark.parametrize("axis", [2, 1], ids=["left-right", "anterior-posterior"])
def test_a_scan_cut_by_the_image_edge_keeps_what_the_cut_opens(real_ct_dir, axis):
    # a large patient: the image edge cuts lungs, stomach and colon gas open, per-slice hole filling misses them
    hu, seg, spacing = _real_ct_and_organs(real_ct_dir)
    n = hu.shape[axis]
    keep = tuple(slice(n // 5, n - n // 5) if a == axis else slice(None) for a in range(3))
    hu, seg = hu[keep], seg[keep]
    mask = body_contour(hu, spacing)
    assert np.all(mask[seg > 0])
    air = hu < -900
    assert np.count_nonzero(air & ~mask) > 0.5 * np.count_nonzero(air)  # the air around the body stays out


@pytest.mark.parametrize("radius, blur, fill", [(32, 0.0, -3024), (48, 0.0, -3024), (32, 0.8, -3024),
                                               (32, 0.0, -1024), (48, 0.0, -1024)])
def test_a_circular_field_of_view_cutting_the_body_keeps_every_organ_voxel_in_it(real_ct_dir, radius, blur, fill):
    # scanners fill the voxels outside the reconstructed circle with e.g. -3024 HU (circles of 192, 288 mm), some
    # converters write it as air (-1024); a resampled scan blurs that edge (blur: Gaussian sigma in voxels): its
    # organ voxels 3 voxels in are kept
    from scipy import ndimage

    hu, seg, spacing = _real_ct_and_organs(real_ct_dir)
    _, y, x = np.indices(hu.shape)
    outside = (y - hu.shape[1] / 2) ** 2 + (x - hu.shape[2] / 2) ** 2 > radius ** 2
    hu = np.where(outside, fill, hu).astype(np.float32)
    inner = ~outside
    if blur:
        hu = ndimage.gaussian_filter(hu, (0, blur, blur))
        inner = ~np.stack([ndimage.binary_dilation(o, iterations=3) for o in outside])
    mask = body_contour(hu, spacing)
    assert np.all(mask[(seg > 0) & inner]) and not mask[outside].any()
    assert np.count_nonzero(seg[inner] > 0) > 40000
    assert (mask & _touches(outside)).any()  # the circle cuts the body


@pytest.mark.parametrize("order", [1, 3], ids=["linear", "cubic spline"])
def test_padding_written_as_air_is_told_from_air_in_a_resampled_scan(real_ct_dir, order):
    # the padding repeats its value (within PADDING_TOLERANCE_HU) in every slice, air has noise; resampling (here
    # to 0.83 of the size in-plane) blends the voxels next to the circle only
    from scipy import ndimage

    from nnunet_ctorg.inference.body_crop import PADDING_MIN_SLICES, air_like_padding

    hu, seg, spacing = _real_ct_and_organs(real_ct_dir)
    corners = np.count_nonzero(air_like_padding(hu, -300.0))  # the real CT's own padding, in its corners
    assert 0 < corners < 0.01 * hu[0].size and not air_like_padding(hu[:PADDING_MIN_SLICES - 1], -300.0).any()
    _, y, x = np.indices(hu.shape)
    outside = (y - hu.shape[1] / 2) ** 2 + (x - hu.shape[2] / 2) ** 2 > 32 ** 2
    zoom = (1, 0.83, 0.83)
    hu = ndimage.zoom(np.where(outside, -1024, hu).astype(np.float32), zoom, order=order)
    seg = ndimage.zoom(seg, zoom, order=0)
    outside = ndimage.zoom(outside.astype(np.uint8), zoom, order=0) > 0
    inner = ~np.stack([ndimage.binary_dilation(o, iterations=3) for o in outside])
    assert np.count_nonzero(air_like_padding(hu, -300.0) & outside[0]) > 0.8 * np.count_nonzero(outside[0])
    mask = body_contour(hu, (spacing[0], spacing[1] / 0.83, spacing[2] / 0.83))
    assert np.count_nonzero(seg[inner] > 0) > 25000 and np.all(mask[(seg > 0) & inner])
    assert (mask & _touches(outside)).any()  # the circle cuts the body


def test_a_cut_is_closed_along_any_axial_axis(real_ct_dir, monkeypatch):
    import nnunet_ctorg.inference.body_crop as body_crop

    hu, seg, spacing = _real_ct_and_organs(real_ct_dir)
    hu, seg = hu[:, :, 24:98], seg[:, :, 24:98]  # the image edge cuts lungs and colon open
    close = body_crop.close_cut_slices
    monkeypatch.setattr(body_crop, "close_cut_slices", lambda body, *args, **kwargs: body)
    opened = body_contour(hu, spacing)
    assert not np.all(opened[seg > 0])
    closed = close(opened.copy(), hu, spacing, 0)
    assert np.all(closed[seg > 0])
    moved = close(np.moveaxis(opened, 0, 2).copy(), np.moveaxis(hu, 0, 2), spacing[1:] + spacing[:1], 2)
    assert np.array_equal(np.moveaxis(moved, 2, 0), closed)


def test_a_cut_lung_leaking_through_a_diagonal_gap_of_the_wall_is_still_added():
    # coarse grids (body_region works at 4 mm) leave body walls one voxel thick along a diagonal: the lung and
    # the air around the body touch at corners only, and stay two regions (4-connected)
    from nnunet_ctorg.inference.body_crop import close_cut_slices

    body = np.zeros((1, 60, 60), bool)
    body[0, 30:, :] = True  # the trunk, cut by the bottom image edge
    lung = np.zeros_like(body)
    lung[0, 35:, 20:40] = True  # opened by the cut
    body &= ~lung
    for k in range(5):  # a staircase of air through the wall: each step touches the next at a corner
        body[0, 34 - k, 19 - k] = False
    hu = np.where(body, 40.0, -1000.0)
    closed = close_cut_slices(body.copy(), hu, (3.0, 1.0, 1.0), 0)
    assert closed[lung].all()
    assert not closed[0, :30].any()  # the air around the body stays out


@pytest.mark.parametrize("axial_axis", [0, 2])
def test_small_air_beside_a_cut_is_sized_in_the_slice_plane(axial_axis):
    # 49 voxels of 2 x 2 mm, 196 mm²: small under min_island_mm2 = 250, not under 150; the 5 mm slice thickness
    # does not count
    from nnunet_ctorg.inference.body_crop import close_cut_slices

    body = np.zeros((1, 60, 60), bool)
    body[0, 40:, :] = True  # cut by the image edges
    hu = np.where(body, 40.0, -1000.0)
    hu[0, 9:11, :11] = hu[0, :11, 9:11] = -3024.0  # the scanner's fill walls off a corner of air, outside the hull
    pocket = np.zeros_like(body)
    pocket[0, :7, :7] = True  # within the fill's 2-voxel rim
    spacing = (5.0, 2.0, 2.0)
    move = (lambda a: np.moveaxis(a, 0, 2)) if axial_axis == 2 else (lambda a: a)
    spacing = spacing[1:] + spacing[:1] if axial_axis == 2 else spacing
    closed = close_cut_slices(move(body).copy(), move(hu), spacing, axial_axis, BodyCropSettings(min_island_mm2=250))
    assert closed[move(pocket)].all()
    air = np.zeros_like(body)
    air[0, 13:40, 13:] = True  # the air above the body, mostly outside its hull
    assert not closed[move(hu < -1500)].any() and not closed[move(air)].any()
    closed = close_cut_slices(move(body).copy(), move(hu), spacing, axial_axis, BodyCropSettings(min_island_mm2=150))
    assert not closed[move(pocket)].any()


def test_body_box_holds_the_body_and_its_margin_and_warns_without_a_body():
    zz, yy, xx = np.mgrid[:100, :100, :100] * 2.0  # 2 mm voxels, 200 mm cube of air
    hu = np.full((100, 100, 100), -1000, np.int16)
    hu[(zz - 60) ** 2 + (yy - 90) ** 2 + (xx - 100) ** 2 <= 30 ** 2] = 40  # a 6 cm ball of soft tissue
    ball = [(np.flatnonzero(np.any(hu > -300, axis=tuple(b for b in range(3) if b != a)))) for a in range(3)]
    settings = BodyCropSettings(margin_mm=4)
    tight = body_crop_box(hu, (2.0, 2.0, 2.0), 0, 1, settings)
    for a, box in enumerate(tight):
        assert box.start <= ball[a][0] and box.stop > ball[a][-1]
        assert box.stop - box.start <= len(ball[a]) + 2 * 2 + 4  # the margin, on the 4 mm grid
    with pytest.warns(UserWarning, match="case3: no body found"):
        whole = body_crop_box(np.full((20, 30, 30), -1000, np.int16), (2.0, 2.0, 2.0), 0, 1, settings, "case3")
    assert whole == (slice(0, 20), slice(0, 30), slice(0, 30))


def test_body_region_is_the_contour_widened_by_the_margin_in_mm():
    zz, yy, xx = np.mgrid[:100, :100, :100] * 2.0  # 2 mm voxels; the region is found on a 4 mm copy
    hu = np.full((100, 100, 100), -1000, np.int16)
    hu[(zz - 60) ** 2 + (yy - 90) ** 2 + (xx - 100) ** 2 <= 30 ** 2] = 40  # a 6 cm ball of soft tissue
    region = body_region(hu, (2.0, 2.0, 2.0), 0, 1, BodyCropSettings(margin_mm=12))
    assert region.steps == (2, 2, 2) and region.shape == (100, 100, 100)
    mask = region.region(tuple(slice(0, 100) for _ in range(3)))
    distance = np.sqrt((zz - 60) ** 2 + (yy - 90) ** 2 + (xx - 100) ** 2)
    assert np.all(mask[distance <= 30 + 8])  # the ball and most of the margin (the 4 mm grid rounds)
    assert not np.any(mask[distance > 30 + 12 + 2 * np.sqrt(3) * 2])  # nothing beyond margin + a coarse voxel
    assert 0.5 < np.mean(mask[(distance > 30) & (distance <= 42)]) < 1  # the margin is a distance, not a box
    inside_box = np.zeros(mask.shape, bool)
    inside_box[region.box] = True
    assert np.all(inside_box[mask]) and not np.all(mask[inside_box])


def test_body_region_answers_any_in_and_region_as_its_upsampled_mask():
    rng = np.random.default_rng(3)
    coarse = rng.random((6, 5, 7)) < 0.05
    region = BodyRegion(coarse, (2, 3, 1), (11, 15, 7), (slice(0, 11), slice(0, 15), slice(0, 7)))
    full = np.repeat(np.repeat(coarse, 2, 0)[:11], 3, 1)  # coarse voxel c: original voxels [c * step, (c + 1) * step)
    assert np.array_equal(region.region((slice(0, 11), slice(0, 15), slice(0, 7))), full)
    assert np.array_equal(region.region((slice(3, 9), slice(4, 5), slice(2, 6))), full[3:9, 4:5, 2:6])
    for _ in range(300):
        ranges = [tuple(sorted(rng.integers(-2, n + 3, 2))) for n in full.shape]
        clipped = tuple(slice(max(a, 0), max(min(b, n), 0)) for (a, b), n in zip(ranges, full.shape))
        assert region.any_in(ranges) == bool(full[clipped].any()), ranges
    single = np.zeros((6, 5, 7), bool)
    single[5, 4, 6] = True  # the last coarse voxel: original voxels [10, 11) x [12, 15) x [6, 7)
    corner = BodyRegion(single, (2, 3, 1), (11, 15, 7), region.box)
    assert corner.any_in([(10, 11), (14, 15), (6, 7)]) and not corner.any_in([(9, 10), (0, 15), (0, 7)])
    assert not corner.any_in([(0, 11), (0, 12), (0, 7)]) and not corner.any_in([(0, 11), (0, 15), (0, 6)])


def test_no_body_and_oblique_scans_are_clear_errors():
    air = sitk.GetImageFromArray(np.full((8, 20, 20), -1000, np.int16))
    with pytest.raises(ValueError, match="case7: no body found"):
        crop_image_to_body(air, what="case7")
    assert body_box(np.zeros((4, 4, 4), bool), (1, 1, 1), 5) is None
    oblique = sitk.Image(8, 8, 8, sitk.sitkInt16)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    oblique.SetDirection((1, 0, 0, 0, c, -s, 0, s, c))
    with pytest.raises(ValueError, match="too oblique"):
        image_axes(oblique)
    with pytest.raises(ValueError, match="margin_mm"):
        BodyCropSettings(margin_mm=-1)


def test_uncrop_rejects_off_grid_crops(phantom):
    image = phantom.to_sitk(phantom.ct)
    cropped, _ = crop_image_to_body(image)
    cropped.SetOrigin(tuple(o + 0.3 for o in cropped.GetOrigin()))
    with pytest.raises(ValueError, match="not on the reference's voxel grid"):
        uncrop_image(cropped, image)


def test_crop_and_uncrop_commands(phantom, tmp_path, capsys):
    (tmp_path / "ct").mkdir()
    sitk.WriteImage(phantom.to_sitk(phantom.ct), str(tmp_path / "ct" / "p_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 10, 10), -1000, np.int16)), str(tmp_path / "ct" /
                                                                                         "air_0000.nii.gz"))
    with pytest.raises(SystemExit):
        crop_body_main(["-i", str(tmp_path / "ct"), "-o", str(tmp_path / "crop")])
    assert "air_0000.nii.gz: air_0000.nii.gz: no body found" in capsys.readouterr().err
    crop_body_main(["-i", str(tmp_path / "ct"), "-o", str(tmp_path / "crop"), "--on_empty", "skip"])
    assert sorted(p.name for p in (tmp_path / "crop").iterdir()) == ["p_0000.nii.gz"]
    cropped = sitk.ReadImage(str(tmp_path / "crop" / "p_0000.nii.gz"))
    seg = sitk.Cast(sitk.BinaryThreshold(cropped, 200, 3000), sitk.sitkUInt8)
    (tmp_path / "seg").mkdir()
    sitk.WriteImage(seg, str(tmp_path / "seg" / "p.nii.gz"))
    uncrop_body_main(["-i", str(tmp_path / "seg"), "-ref", str(tmp_path / "ct"), "-o", str(tmp_path / "full")])
    full = sitk.ReadImage(str(tmp_path / "full" / "p.nii.gz"))
    assert full.GetSize() == phantom.ct.shape[::-1]
    expected = (phantom.ct >= 200) & (phantom.ct <= 3000)
    _, box = crop_image_to_body(phantom.to_sitk(phantom.ct))
    assert np.array_equal(sitk.GetArrayFromImage(full)[box] > 0, expected[box])
