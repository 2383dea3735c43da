"""Tile rows of nnU-Net's sliding-window grid and the chunk bookkeeping."""

import numpy as np
import pytest

from nnunet_ctorg.inference.tile_chunks import axis_range, complete_until, row_groups, shift_slicer, tile_rows


def _slicers_3d(steps, patch):
    return [(slice(None), slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
            for a in steps[0] for b in steps[1] for c in steps[2]]


def test_rows_come_from_nnunets_own_steps():
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window((300, 40, 40), (64, 32, 32), 0.5)
    starts, tile = tile_rows(_slicers_3d(steps, (64, 32, 32)), 0)
    assert starts.tolist() == list(steps[0]) and tile == 64
    starts, tile = tile_rows(_slicers_3d(steps, (64, 32, 32)), 2)
    assert starts.tolist() == list(steps[2]) and tile == 32
    two_d = [(slice(None), d, slice(0, 16), slice(0, 16)) for d in range(5)]
    starts, tile = tile_rows(two_d, 0)
    assert starts.tolist() == [0, 1, 2, 3, 4] and tile == 1


def test_a_slice_is_complete_only_when_no_later_row_covers_it():
    starts = np.array([0, 30, 59, 88])
    assert complete_until(starts, 152, 1) == 30  # slices >= 30 are still covered by row 1
    assert complete_until(starts, 152, 4) == 152
    # every slice below the bound is covered by no row >= stop_row
    for stop in range(1, 4):
        bound = complete_until(starts, 152, stop)
        assert all(starts[r] >= bound for r in range(stop, 4))


def test_shifting_and_ranges_of_slicers():
    s = (slice(None), slice(30, 94), slice(0, 32), slice(8, 40))
    moved = shift_slicer(s, 0, 30)
    assert axis_range(moved, 0) == (0, 64) and moved[2:] == s[2:]
    assert axis_range(shift_slicer(s, 2, 8), 2) == (0, 32)
    assert axis_range(shift_slicer((slice(None), 7, slice(0, 4), slice(0, 4)), 0, 5), 0) == (2, 3)


def test_row_groups_cover_every_row_once():
    groups = row_groups(10, 3)
    assert groups[0][0] == 0 and groups[-1][1] == 10 and len(groups) == 4
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert max(b - a for a, b in groups) <= 3
    assert row_groups(2, 5) == [(0, 2)]
    with pytest.raises(ValueError, match="rows_per_chunk must be >= 1"):
        row_groups(3, 0)
