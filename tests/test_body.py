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
