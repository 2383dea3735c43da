"""Metrics against hand-computed cases and an independent brute-force implementation."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_ctorg.evaluation.metrics import border, organ_metrics


def _reference_metrics(ref, pred, spacing, tol):
    """Independent implementation: scipy erosion borders and nearest neighbours by k-d tree."""
    structure = ndimage.generate_binary_structure(3, 1)
    pts = []
    for m in (ref, pred):
        b = m & ~ndimage.binary_erosion(m, structure, border_value=0)
        pts.append(np.argwhere(b) * np.asarray(spacing))
    d_ab = cKDTree(pts[1]).query(pts[0])[0]
    d_ba = cKDTree(pts[0]).query(pts[1])[0]
    inter = np.count_nonzero(ref & pred)
    return {"dsc": 2 * inter / (ref.sum() + pred.sum()), "iou": inter / np.count_nonzero(ref | pred),
            "nsd": (np.sum(d_ab <= tol) + np.sum(d_ba <= tol)) / (d_ab.size + d_ba.size),
            "hd95": max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)),
            "assd": (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)}


def _sphere(shape, centre, radius_mm, spacing):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= radius_mm ** 2


def test_border_is_the_six_connected_shell():
    m = np.zeros((7, 7, 7), bool)
    m[1:6, 1:6, 1:6] = True
    b = border(m)
    assert b.sum() == 125 - 27
    assert not b[2:5, 2:5, 2:5].any()
    full = np.ones((3, 3, 3), bool)  # the array edge counts as outside
    assert border(full).sum() == 26


def test_shifted_cubes_hand_computed():
    spacing = (2.0, 1.0, 0.5)
    ref = np.zeros((30, 30, 30), bool)
    ref[10:20, 10:20, 10:20] = True
    pred = np.roll(ref, 2, axis=2)  # 2 voxels = 1 mm along x
    m = organ_metrics(ref, pred, spacing, tolerance_mm=1.0)
    assert m.dsc == pytest.approx(0.8)
    assert m.iou == pytest.approx(800 / 1200)
    assert m.volume_ref_ml == pytest.approx(1000 * 1.0 / 1000)
    assert m.volume_diff_ml == pytest.approx(0.0)
    assert m.nsd == pytest.approx(1.0)  # every border voxel is within 1 mm of the other border
    # the two x faces are 1 mm from the other surface, every other border voxel lies on it or 0.5 mm from it
    assert m.hd95 == pytest.approx(1.0)
    m_tight = organ_metrics(ref, pred, spacing, tolerance_mm=0.4)
    assert m_tight.nsd < 1.0


def test_one_slice_shift_along_anisotropic_z():
    spacing = (3.0, 1.0, 1.0)
    ref = np.zeros((10, 12, 12), bool)
    ref[2:6, 2:10, 2:10] = True
    pred = np.roll(ref, 1, axis=0)
    m = organ_metrics(ref, pred, spacing, tolerance_mm=2.0)
    # border of a 4x8x8 box: 256 - 2*6*6 = 184 voxels; the trailing cap (64 voxels, > 5 %) is one z step, 3 mm,
    # from the other border, the side walls lie on it and the leading cap's centre is 1-3 mm from it
    expected = _reference_metrics(ref, pred, spacing, 2.0)
    assert m.assd == pytest.approx(expected["assd"])
    assert m.hd95 == pytest.approx(3.0)
    assert m.dsc == pytest.approx(2 * 3 / 8)


def test_concentric_spheres_distance_is_radius_difference():
    spacing = (0.5, 0.5, 0.5)
    shape = (64, 64, 64)
    ref = _sphere(shape, (32, 32, 32), 10.0, spacing)
    pred = _sphere(shape, (32, 32, 32), 12.0, spacing)
    m = organ_metrics(ref, pred, spacing, tolerance_mm=1.0)
    assert m.assd == pytest.approx(2.0, abs=0.3)
    assert m.hd95 == pytest.approx(2.0, abs=0.5)
    assert m.nsd < 0.05
    assert organ_metrics(ref, pred, spacing, tolerance_mm=3.0).nsd == pytest.approx(1.0)
    assert m.volume_diff_ml == pytest.approx(4 / 3 * math.pi * (12 ** 3 - 10 ** 3) / 1000, rel=0.03)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.9)])
def test_matches_independent_implementation(spacing):
    rng = np.random.default_rng(3)
    shape = (40, 48, 44)
    ref = ndimage.binary_opening(_sphere(shape, (20, 22, 20), 12 * min(spacing) * 1.5, spacing)
                                 | (ndimage.gaussian_filter(rng.random(shape), 2) > 0.52))
    pred = ndimage.binary_dilation(ref, iterations=1) & ~(ndimage.gaussian_filter(rng.random(shape), 2) > 0.53)
    m = organ_metrics(ref, pred, spacing, tolerance_mm=1.5)
    expected = _reference_metrics(ref, pred, spacing, 1.5)
    for name, value in expected.items():
        assert getattr(m, name) == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_empty_mask_rules():
    empty = np.zeros((8, 8, 8), bool)
    blob = empty.copy()
    blob[2:5, 2:5, 2:5] = True
    both = organ_metrics(empty, empty, (1, 1, 1))
    assert (both.dsc, both.iou, both.nsd, both.hd95, both.assd) == (1.0, 1.0, 1.0, 0.0, 0.0)
    for ref, pred in ((empty, blob), (blob, empty)):
        m = organ_metrics(ref, pred, (2, 1, 1))
        assert (m.dsc, m.iou, m.nsd) == (0.0, 0.0, 0.0)
        assert math.isnan(m.hd95) and math.isnan(m.assd)
    assert organ_metrics(empty, blob, (2, 1, 1)).volume_diff_ml == pytest.approx(27 * 2 / 1000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shapes differ"):
        organ_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="-1"):
        organ_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), (1, 1, 1), tolerance_mm=-1)
