"""EDT morphology equals scipy.ndimage with the same ball, on random masks and anisotropic spacing."""

import numpy as np
import pytest
from scipy import ndimage

from nnunet_ctorg.morphology import ball, closing, dilate, erode, opening

OPERATIONS = [(dilate, ndimage.binary_dilation), (erode, ndimage.binary_erosion),
              (opening, ndimage.binary_opening), (closing, ndimage.binary_closing)]


@pytest.mark.parametrize("seed", range(8))
def test_equals_scipy_voxel_for_voxel(seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.4, 3.0, 3))
    radius = float(rng.uniform(0.5, 9.0))
    shape = tuple(rng.integers(12, 36, 3))
    mask = ndimage.binary_dilation(rng.random(shape) < rng.uniform(0.005, 0.05), iterations=int(rng.integers(1, 3)))
    structure = ball(radius, spacing)
    for ours, reference in OPERATIONS:
        assert np.array_equal(ours(mask, radius, spacing), reference(mask, structure)), (ours.__name__, spacing,
                                                                                         radius)


def test_ball_respects_anisotropic_spacing_and_exact_ties():
    se = ball(5.0, (5.0, 1.0, 1.0))
    assert se.shape == (3, 11, 11)
    assert se[1, 5, 0] and se[0, 5, 5] and not se[0, 5, 6]
    assert ball(5.0, (1.0, 1.0, 1.0))[5, 8, 9]  # offset (0, 3, 4): exactly 5 mm is inside


def test_out_of_volume_is_background():
    full = np.ones((10, 10, 10), bool)
    eroded = erode(full, 2.0, (1.0, 1.0, 1.0))
    assert not eroded[0].any() and not eroded[:, :, -1].any() and eroded[5, 5, 5]
    assert dilate(np.zeros((5, 5, 5), bool), 3.0, (1, 1, 1)).sum() == 0


@pytest.mark.parametrize("kwargs,match", [({"radius_mm": -1.0}, "radius"), ({"spacing": (1, 0, 1)}, "spacing")])
def test_bad_arguments(kwargs, match):
    args = {"mask": np.zeros((4, 4, 4), bool), "radius_mm": 1.0, "spacing": (1, 1, 1)} | kwargs
    with pytest.raises(ValueError, match=match):
        dilate(**args)
    with pytest.raises(ValueError, match="3-D"):
        dilate(np.zeros((4, 4), bool), 1.0, (1, 1, 1))
