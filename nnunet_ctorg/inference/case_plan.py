"""One case's chunked whole-scan prediction, planned before its first chunk runs.

:class:`NetworkGrid` is the case's geometry in nnU-Net's transposed axes; :class:`CasePlan` adds nnU-Net's
whole-scan tile grid (padding, tile rows, the tiles a body box keeps), the chunks of tile rows and, per
original slice, the network slices its export reads. Both are immutable: the steps of
:mod:`nnunet_ctorg.inference.chunk_steps` take the plan and one chunk. The plan plays the part of TorchIO's
``GridSampler`` (tile locations in); :class:`~nnunet_ctorg.inference.chunk_steps.LogitSums` that of its
``GridAggregator``.
"""

from dataclasses import dataclass, replace

import numpy as np

from nnunet_ctorg.inference.slab_resampling import SlabResampler
from nnunet_ctorg.inference.tile_chunks import axis_range, complete_until, row_groups, shift_slicer, tile_rows


@dataclass(frozen=True)
class NetworkGrid:
    """One case's geometry in nnU-Net's transposed axes (``transpose_forward`` ``tf``, backward ``tb``).

    ``k``: the chunk axis; ``bbox_t``: nnU-Net's crop to non-zero voxels; ``crop_t``: the cropped shape;
    ``net``: the shape on the network grid (before padding to the patch); ``spacing_t``/``target``: the
    spacings of the original and the network grid.
    """

    tf: list[int]
    tb: list[int]
    k: int
    bbox_t: list[tuple[int, int]]
    crop_t: list[int]
    net: list[int]
    spacing_t: list[float]
    target: list[float]

    def export_resampler(self, axis: int, resampling: dict) -> SlabResampler:
        """nnU-Net's probability resampling from the network grid back to the cropped original grid, in slabs
        along ``axis``."""
        return SlabResampler(self.net, self.crop_t, self.target, self.spacing_t, axis, resampling)


def plane_voxels(bbox, k: int) -> float:
    """Voxels of one slice across axis ``k`` of the box ``bbox`` (per axis ``(start, stop)``)."""
    return float(np.prod([b - a for a, b in bbox])) / (bbox[k][1] - bbox[k][0])


def padding_to_patch(net, patch) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(padded shape, padding below) of nnU-Net's centred zero padding of a network-grid image to the patch
    (a 2-D patch pads the last two axes)."""
    first = 3 - len(patch)
    padded, below = list(net), [0, 0, 0]
    for d in range(first, 3):
        if net[d] < patch[d - first]:
            padded[d] = patch[d - first]
            below[d] = (padded[d] - net[d]) // 2
    return tuple(padded), tuple(below)


def body_box_network_ranges(grid: NetworkGrid, pad_below, body_box, resampling: dict):
    """Per transposed axis, the padded network range [a, b) the export of ``body_box`` (slices of the original
    array) reads; every tile covering a voxel of it is run, so these voxels get all their whole-scan tiles.

    ``[(0, inf)] * 3`` without a box; ``None`` if the box lies outside nnU-Net's crop to non-zero voxels.
    """
    if body_box is None:
        return [(0, np.inf)] * 3
    ranges = []
    for d in range(3):
        box = body_box[grid.tf[d]]
        lo, hi = max(box.start - grid.bbox_t[d][0], 0), min(box.stop - grid.bbox_t[d][0], grid.crop_t[d])
        if lo >= hi:
            return None
        a, b = grid.export_resampler(d, resampling).source_range(lo, hi)
        ranges.append((a + pad_below[d], b + pad_below[d]))
    return ranges


@dataclass(frozen=True)
class CasePlan:
    """What every chunk of one case needs, fixed before the first chunk (transposed axes; "padded": the network
    grid padded to the patch as nnU-Net pads it).

    ``starts``/``tile``: the distinct starts of nnU-Net's tile rows along ``grid.k`` and the tile length;
    ``rows``: per row, the tiles to run as (position in nnU-Net's loop, slicer), tiles that no body voxel's
    export reads left out; ``n_tiles``: the tiles of nnU-Net's whole-scan grid; ``chunks``: the
    ``[first, stop)`` rows of each chunk; ``reads``: per original (cropped) slice along ``grid.k``, the
    unpadded network slices ``[a, b)`` its export reads.
    """

    grid: NetworkGrid
    padded: tuple[int, ...]
    pad_below: tuple[int, ...]
    starts: np.ndarray
    tile: int
    rows: tuple[tuple[tuple[int, tuple], ...], ...]
    n_tiles: int
    chunks: tuple[tuple[int, int], ...]
    reads: np.ndarray

    @property
    def k(self) -> int:
        return self.grid.k

    @property
    def step(self) -> float:
        """Mean distance of consecutive tile rows (the tile length for a single row)."""
        n = len(self.starts)
        return (self.starts[-1] - self.starts[0]) / (n - 1) if n > 1 else self.tile

    @property
    def tiles_run(self) -> int:
        return sum(len(r) for r in self.rows)

    def in_chunks(self, rows_per_chunk: int) -> "CasePlan":
        """This plan with chunks of at most ``rows_per_chunk`` tile rows, as equal as possible."""
        if not self.chunks:
            return self
        return replace(self, chunks=tuple(row_groups(len(self.starts), rows_per_chunk)))

    def chunk_slices(self, chunk: tuple[int, int]) -> tuple[int, int]:
        """Padded network slices ``[lo, hi)`` along ``k`` that the tiles of ``chunk`` cover."""
        first, stop = chunk
        return int(self.starts[first]), int(self.starts[stop - 1]) + self.tile

    def chunk_tiles(self, chunk: tuple[int, int]) -> list[tuple]:
        """The slicers of ``chunk`` in nnU-Net's order, moved into a buffer starting at the chunk's first slice.

        Where the chunk axis is not nnU-Net's outer loop, the half-precision sums of a voxel are added in
        nnU-Net's order except across chunk seams."""
        lo = self.chunk_slices(chunk)[0]
        return [shift_slicer(s, self.k, lo) for _, s in sorted(t for r in range(*chunk) for t in self.rows[r])]

    def complete_after(self, chunk: tuple[int, int]) -> int:
        """Padded network slices below this have all their tiles once ``chunk`` (and those before it) ran."""
        return complete_until(self.starts, self.padded[self.k], chunk[1])


def export_reads(grid: NetworkGrid, axis: int, resampling: dict) -> np.ndarray:
    """Per original (cropped) slice across transposed ``axis``, the unpadded network slices ``[a, b)`` its
    export reads."""
    exporter = grid.export_resampler(axis, resampling)
    return np.array([exporter.source_range(o, o + 1) for o in range(grid.crop_t[axis])]).reshape(-1, 2)


def body_reaches_tile(grid: NetworkGrid, pad_below, reads: list[np.ndarray], body, slicer) -> bool:
    """Whether the export of a voxel of ``body`` (a :class:`~nnunet_ctorg.inference.body_crop.BodyRegion`) reads
    a network voxel of the tile ``slicer``; ``reads``: :func:`export_reads` per transposed axis.

    The export is separable: a voxel reads the product of its ranges along the axes, and the voxels whose range
    along an axis meets the tile's form one run of slices (the ranges grow monotonically).
    """
    ranges = [None] * 3
    for d in range(3):
        a, b = axis_range(slicer, d)
        a, b = a - pad_below[d], b - pad_below[d]
        first = int(np.searchsorted(reads[d][:, 1], a, side="right"))  # first slice reading beyond a
        stop = int(np.searchsorted(reads[d][:, 0], b, side="left"))  # first slice reading from b on
        if first >= stop:
            return False
        ranges[grid.tf[d]] = (first + grid.bbox_t[d][0], stop + grid.bbox_t[d][0])
    return body.any_in(ranges)


def plan_case(predictor, grid: NetworkGrid, body_box, resampling: dict, body=None) -> CasePlan:
    """The plan of one chunk holding every row, on the tile grid ``predictor`` (an ``nnUNetPredictor``) lays
    out for the whole padded scan; without chunks where ``body_box`` misses nnU-Net's crop (nothing to run).
    ``resampling``: the export's (:func:`~nnunet_ctorg.inference.slab_resampling.resampling_kind`); ``body``: a
    :class:`~nnunet_ctorg.inference.body_crop.BodyRegion` whose voxels alone need their tiles (``None``: those
    of ``body_box``)."""
    padded, pad_below = padding_to_patch(grid.net, predictor.configuration_manager.patch_size)
    slicers = predictor._internal_get_sliding_window_slicers(padded)
    starts, tile = tile_rows(slicers, grid.k)
    keep = body_box_network_ranges(grid, pad_below, body_box, resampling)
    if keep is None:  # nothing to run, nothing to export
        return CasePlan(grid, padded, pad_below, starts, tile, ((),) * len(starts), len(slicers), (), np.zeros((0, 2)))
    reads = [export_reads(grid, d, resampling) for d in range(3)]
    row_of = {int(s): i for i, s in enumerate(starts)}
    rows: list[list[tuple]] = [[] for _ in starts]
    for i, s in enumerate(slicers):
        if all(axis_range(s, d)[0] < keep[d][1] and axis_range(s, d)[1] > keep[d][0] for d in range(3)) and (
                body is None or body_reaches_tile(grid, pad_below, reads, body, s)):
            rows[row_of[axis_range(s, grid.k)[0]]].append((i, s))
    return CasePlan(grid, padded, pad_below, starts, tile, tuple(tuple(r) for r in rows), len(slicers),
                    ((0, len(starts)),), reads[grid.k])
