"""The body mask used by the labelers and the dataset merge."""

import numpy as np
import pytest

from nnunet_ctorg.body import body_mask


def test_body_mask_fills_the_lungs_and_leaves_the_table_out():
    hu = np.full((10, 60, 60), -1000, np.int16)
    hu[:, 10:40, 10:50] = 40  # trunk
    hu[:, 18:32, 15:28] = -850  # a lung inside it
    hu[:, 50:54, 5:55] = 300  # the table: apart from the trunk, smaller
    mask = body_mask(hu)
    assert mask[:, 10:40, 10:50].all()
    assert mask.sum() == 10 * 30 * 40
    with pytest.raises(ValueError, match="no body found"):
        body_mask(np.full((4, 8, 8), -1000, np.int16))
    with pytest.raises(ValueError, match="3-D"):
        body_mask(np.zeros((8, 8), np.int16))


def test_body_mask_keeps_a_lung_the_image_edge_cuts_open():
    hu = np.full((10, 60, 60), -1000, np.int16)
    hu[:, 10:40, 0:40] = 40  # a trunk cut by the image edge at x = 0
    hu[:, 18:32, 0:20] = -850  # its lung, open onto the edge
    hu[:, 50:54, 5:55] = 300  # the table
    mask = body_mask(hu)
    assert mask[:, 10:40, 0:40].all()
    assert not mask[:, 50:54].any() and not mask[:, :8].any()  # table and air in front stay out


def test_body_mask_of_an_uncut_slice_keeps_its_outline():
    hu = np.full((4, 40, 40), -1000, np.int16)
    hu[:, 1:39, 1:39] = 40  # a trunk with one voxel of air around it: the image edge cuts nothing
    hu[:, 1:25, 15:25] = -1000  # a deep notch from the front, open onto that air
    mask = body_mask(hu)
    assert not mask[:, 1:25, 15:25].any() and not mask[:, 0].any()
