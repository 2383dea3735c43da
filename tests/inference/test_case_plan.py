"""The per-case plan's pieces against nnU-Net's own functions."""

import pytest
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image

from nnunet_ctorg.inference.case_plan import padding_to_patch


@pytest.mark.parametrize("net, patch", [
    ((40, 30, 50), (64, 64)),  # a 2-D model: the last two axes padded, the first kept
    ((40, 30, 50), (48, 32, 64)),  # 3-D, every axis short
    ((40, 30, 50), (32, 32, 32)),  # 3-D, only the second axis short
    ((80, 90, 100), (64, 80)),  # nothing to pad
])
def test_padding_to_patch_is_nnunets_pad_nd_image(net, patch):
    """nnU-Net's sliding window pads the network-grid case with ``pad_nd_image(data, patch_size, ...)``: the
    padded shape and where the case sits in it must be the plan's."""
    padded, below = padding_to_patch(net, patch)
    data, slicer = pad_nd_image(torch.zeros((1, *net)), patch, "constant", {"value": 0}, True, None)
    assert padded == tuple(data.shape[1:])
    assert below == tuple(int(s.start) for s in slicer[1:])
