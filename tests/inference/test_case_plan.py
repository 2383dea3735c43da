"""The per-case plan's pieces against nnU-Net's own functions."""

import numpy as np
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


def _plan_with_body(plans: dict, crop_t, spacing_t, body):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from nnunet_ctorg.inference.case_plan import NetworkGrid, plan_case
    from nnunet_ctorg.inference.slab_resampling import resampling_kind
    from tests.inference.standin import standin_predictor

    predictor = standin_predictor(plans)
    cm = predictor.configuration_manager
    target = list(cm.spacing)
    net = [int(n) for n in compute_new_shape(crop_t, spacing_t, target)]
    grid = NetworkGrid([0, 1, 2], [0, 1, 2], 0, [(0, n) for n in crop_t], list(crop_t), net, list(spacing_t), target)
    resampling = resampling_kind(cm.configuration, "probabilities")
    whole = plan_case(predictor, grid, None, resampling)
    return whole, plan_case(predictor, grid, None, resampling, body), grid, resampling


def _tiles(plan) -> set:
    return {i for row in plan.rows for i, _ in row}


def test_a_tile_that_reads_one_body_voxel_is_run_and_its_neighbour_is_not():
    """At the model's spacing the export of voxel v reads network voxel v alone (padding aside)."""
    from nnunet_ctorg.inference.body_crop import BodyRegion
    from nnunet_ctorg.inference.tile_chunks import axis_range
    from tests.inference.standin import standin_plans

    crop_t = (40, 30, 30)
    mask = np.zeros(crop_t, bool)
    mask[23, 15, 7] = True  # 23: last slice of the tile rows starting at 8 (tiles of 16, step 8) and first of 16..
    body = BodyRegion(mask, (1, 1, 1), crop_t, tuple(slice(0, n) for n in crop_t))
    whole, planned, grid, _ = _plan_with_body(standin_plans(spacing=(3.0, 6.0, 6.0), patch=(16, 16, 16)),
                                              crop_t, (3.0, 6.0, 6.0), body)
    assert grid.net == list(crop_t)
    expected = {i for row in whole.rows for i, s in row
                if all(axis_range(s, d)[0] <= (23, 15, 7)[d] < axis_range(s, d)[1] for d in range(3))}
    assert _tiles(planned) == expected and 0 < len(expected) < whole.tiles_run
    starts = sorted({axis_range(s, 0)[0] for row in whole.rows for _, s in row})
    assert 8 in starts and 24 in starts  # the row ending at 24 runs, the one starting at 24 does not
    assert {axis_range(s, 0)[0] for row in planned.rows for _, s in row} == {8, 16}


@pytest.mark.parametrize("spacing_t, steps", [((2.0, 5.0, 7.0), (1, 1, 1)), ((4.0, 3.0, 3.0), (2, 1, 3))],
                         ids=["linear resampling", "coarse mask"])
def test_the_tiles_run_are_those_any_body_voxels_export_reads(spacing_t, steps):
    """Against every body voxel and every tile, one by one: a tile runs iff a body voxel's export reads it."""
    from nnunet_ctorg.inference.body_crop import BodyRegion
    from nnunet_ctorg.inference.case_plan import export_reads
    from nnunet_ctorg.inference.tile_chunks import axis_range
    from tests.inference.standin import standin_plans

    crop_t = (36, 22, 20)
    rng = np.random.default_rng(5)
    coarse = np.zeros(tuple(-(-n // s) for n, s in zip(crop_t, steps)), bool)
    coarse[tuple(rng.integers(0, n, 3) for n in coarse.shape)] = True
    body = BodyRegion(coarse, steps, crop_t, tuple(slice(0, n) for n in crop_t))
    whole, planned, grid, resampling = _plan_with_body(standin_plans(spacing=(3.0, 4.0, 4.0), patch=(8, 8, 8)),
                                                       crop_t, spacing_t, body)
    reads = [export_reads(grid, d, resampling) for d in range(3)]
    voxels = np.argwhere(body.region(tuple(slice(0, n) for n in crop_t)))
    expected = set()
    for i, s in (t for row in whole.rows for t in row):
        ranges = [np.array(axis_range(s, d)) - whole.pad_below[d] for d in range(3)]
        if any(all(reads[d][v[d], 0] < ranges[d][1] and reads[d][v[d], 1] > ranges[d][0] for d in range(3))
               for v in voxels):
            expected.add(i)
    assert _tiles(planned) == expected and 0 < len(expected) < whole.tiles_run
