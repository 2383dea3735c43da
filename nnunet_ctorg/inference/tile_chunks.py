"""Chunks made of whole tile rows of nnU-Net's whole-scan sliding-window grid.

nnU-Net adds, at every voxel of the network grid, the Gaussian-weighted logits of the tiles that
cover it (in half precision, in the order of its slicers), then divides by the summed weights. Here
the tiles of the grid nnU-Net lays out for the *whole* scan are run in chunks of consecutive *rows*
(tiles that share a start along the chunk axis); the sums of the slices a chunk leaves incomplete are
carried into the next chunk. When the chunk axis is the slicers' outermost loop (nnU-Net's first
axis after its transpose, the usual case for CT), every voxel receives its tiles in nnU-Net's order, so
the sums are the same numbers bit for bit. A network slice is *complete* once every row covering it
has run; an original slice is exported as soon as the network slices its resampling reads are
complete. Nothing is blended and no tile runs twice.
"""

import numpy as np


def tile_rows(slicers: list[tuple], axis: int) -> tuple[np.ndarray, int]:
    """(sorted distinct tile starts along spatial ``axis``, tile length) of nnU-Net's sliding-window slicers.

    A slicer is ``(slice(None), s_0, s_1, s_2)`` with slices, or an int for the slice index of a 2-D model.
    """
    starts, lengths = set(), set()
    for s in slicers:
        a = s[axis + 1]
        if isinstance(a, slice):
            starts.add(a.start)
            lengths.add(a.stop - a.start)
        else:
            starts.add(int(a))
            lengths.add(1)
    if len(lengths) != 1:
        raise ValueError(f"tiles of different lengths along axis {axis}: {sorted(lengths)}")
    return np.array(sorted(starts)), lengths.pop()


def axis_range(slicer: tuple, axis: int) -> tuple[int, int]:
    """[start, stop) of a slicer along spatial ``axis``."""
    a = slicer[axis + 1]
    return (a.start, a.stop) if isinstance(a, slice) else (int(a), int(a) + 1)


def shift_slicer(slicer: tuple, axis: int, offset: int) -> tuple:
    """The slicer moved by ``-offset`` along spatial ``axis`` (into a buffer starting at ``offset``)."""
    a = slicer[axis + 1]
    moved = slice(a.start - offset, a.stop - offset) if isinstance(a, slice) else int(a) - offset
    return (*slicer[:axis + 1], moved, *slicer[axis + 2:])


def complete_until(starts: np.ndarray, n_padded: int, stop_row: int) -> int:
    """Network slices (padded grid) below this have received all their tiles once rows ``< stop_row`` ran."""
    return int(starts[stop_row]) if stop_row < len(starts) else n_padded


def row_groups(n_rows: int, rows_per_chunk: int) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[first, stop)`` of at most ``rows_per_chunk`` rows, as equal as possible."""
    if n_rows < 1 or rows_per_chunk < 1:
        raise ValueError(f"n_rows and rows_per_chunk must be >= 1, got {n_rows} and {rows_per_chunk}")
    n = -(-n_rows // rows_per_chunk)
    bounds = [i * n_rows // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
