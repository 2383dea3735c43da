"""nnU-Net's preprocessing of a raw CT, network slices at a time (the first step of a chunk).

Every step is the whole-scan step of ``nnUNetv2_predict`` restricted to a block of slices: nnU-Net's crop to
non-zero voxels uses the bounding box of the whole scan (a cheap pre-pass, :func:`scan_statistics`);
normalisation is nnU-Net's normaliser class (pointwise for CT models); resampling to the network's spacing
is nnU-Net's ``resample_data_or_seg_to_shape`` at the whole scan's sample positions, computed from slabs with
margins (:mod:`.slab_resampling`), clipped to the whole scan's range as scikit-image clips it.
"""

from dataclasses import dataclass

import numpy as np

from nnunet_ctorg.inference.case_plan import NetworkGrid, plane_voxels
from nnunet_ctorg.inference.slab_resampling import SlabResampler, resampling_kind


@dataclass
class ScanStatistics:
    """What the whole scan contributes to nnU-Net's per-case preprocessing, gathered slab by slab.

    ``bbox``: nnU-Net's crop to non-zero voxels, per array axis; ``low``/``high``: per array axis, the
    minimum/maximum of every index inside that crop (``low[a][i]`` = min over the cropped slice ``i``
    across axis ``a``; ``inf``/``-inf`` outside the crop).
    """

    bbox: list[tuple[int, int]]
    low: list[np.ndarray]
    high: list[np.ndarray]


def _slabs(shape, axis: int, slab: int, box=None):
    """(index along ``axis``, block index) of consecutive slabs of ``slab`` slices, inside ``box`` if given."""
    box = box or [(0, n) for n in shape]
    for start in range(box[axis][0], box[axis][1], slab):
        index = [slice(*b) for b in box]
        index[axis] = slice(start, min(start + slab, box[axis][1]))
        yield index[axis], tuple(index)


def scan_statistics(hu: np.ndarray, axis: int, slab: int = 16) -> ScanStatistics:
    """:class:`ScanStatistics` of a 3-D array, reading ``slab`` slices along ``axis`` at a time (two passes)."""
    nonzero = [np.zeros(s, bool) for s in hu.shape]
    for along, index in _slabs(hu.shape, axis, slab):
        nz = np.asarray(hu[index]) != 0
        for a in range(3):
            any_nz = nz.any(axis=tuple(b for b in range(3) if b != a))
            if a == axis:
                nonzero[a][along] = any_nz
            else:
                nonzero[a] |= any_nz
    bbox = []
    for a in range(3):
        hit = np.flatnonzero(nonzero[a])
        bbox.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, hu.shape[a]))
    # the extremes of nnU-Net's cropped image: zeros outside the crop do not count
    low = [np.full(s, np.inf) for s in hu.shape]
    high = [np.full(s, -np.inf) for s in hu.shape]
    for along, index in _slabs(hu.shape, axis, slab, bbox):
        block = np.asarray(hu[index])
        for a in range(3):
            other = tuple(b for b in range(3) if b != a)
            lo, hi = block.min(axis=other), block.max(axis=other)
            at = along if a == axis else slice(*bbox[a])
            np.minimum(low[a][at], lo, out=low[a][at])
            np.maximum(high[a][at], hi, out=high[a][at])
    return ScanStatistics(bbox, low, high)


class CTPreprocessing:
    """nnU-Net's preprocessing of one model (an initialised ``nnUNetPredictor``) for raw CT arrays."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        cm = predictor.configuration_manager
        self.resampling = resampling_kind(cm.configuration, "data")
        self.preprocessor = cm.preprocessor_class(verbose=False)

    def normalize(self, block: np.ndarray) -> np.ndarray:
        """nnU-Net's normalisation of a float32 (1, ...) block, in place."""
        p = self.predictor
        return self.preprocessor._normalize(block, np.zeros((1, 1, 1, 1), np.int8), p.configuration_manager,
                                            p.plans_manager.foreground_intensity_properties_per_channel)

    def sigma(self, current, new) -> np.ndarray | None:
        """The anti-aliasing Gaussian's sigma per axis where the configuration was planned with it."""
        from nnunet_ctorg.planning.antialiasing import ANTIALIASING_KEY, DEFAULT_SIGMA_FACTOR, antialiasing_sigma

        settings = self.predictor.configuration_manager.configuration.get(ANTIALIASING_KEY)
        if not settings:
            return None
        return antialiasing_sigma(current, new, float(settings.get("sigma_factor", DEFAULT_SIGMA_FACTOR)))

    def network_grid(self, hu, spacing, axial: int) -> tuple[NetworkGrid, ScanStatistics]:
        """The case's :class:`NetworkGrid` (chunks along array axis ``axial``) and its scan statistics."""
        from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

        pm, cm = self.predictor.plans_manager, self.predictor.configuration_manager
        tf = list(pm.transpose_forward)
        spacing_t = [float(spacing[i]) for i in tf]
        target = list(cm.spacing) if len(cm.spacing) == 3 else [spacing_t[0], *cm.spacing]
        stats = scan_statistics(hu, axial)
        bbox_t = [stats.bbox[i] for i in tf]
        crop_t = [b - a for a, b in bbox_t]
        net = [int(n) for n in compute_new_shape(crop_t, spacing_t, target)]
        grid = NetworkGrid(tf, list(pm.transpose_backward), tf.index(axial), bbox_t, crop_t, net, spacing_t, target)
        return grid, stats


class NetworkSlices:
    """One raw CT array ``hu`` (chunks along its array axis ``axial``) on the network grid, made on demand:
    :meth:`fill` writes nnU-Net's preprocessed network slices, in blocks whose original slab (margins included)
    holds about ``block_voxels`` voxels, so that it and its float64 copies stay small.

    ``clip``: the input ranges scikit-image's resize clips to (normalised; ``None`` where no clip reaches
    across blocks); ``margin``: original slices the resampling reads beyond a block.
    """

    def __init__(self, preprocessing: CTPreprocessing, hu, axial: int, grid: NetworkGrid, stats: ScanStatistics,
                 block_voxels: int) -> None:
        self.preprocessing, self.hu, self.axial, self.grid = preprocessing, hu, axial, grid
        self.block_voxels = block_voxels
        self.resampler = SlabResampler(grid.crop_t, grid.net, grid.spacing_t, grid.target, grid.k,
                                       preprocessing.resampling, preprocessing.sigma(grid.spacing_t, grid.target))
        self.clip = self._clip_ranges(stats)
        self.margin = 0 if self.resampler.identity else self.resampler.margin + 4

    def fill(self, view, n_lo: int, n_hi: int) -> None:
        """nnU-Net's preprocessing of network slices [n_lo, n_hi) along ``grid.k`` into the (1, ...) ``view``."""
        import torch

        k, rs = self.grid.k, self.resampler
        per_block = self._block_slices()
        for b_lo in range(n_lo, n_hi, per_block):
            b_hi = min(b_lo + per_block, n_hi)
            a, b = rs.source_range(b_lo, b_hi)
            block = self._normalized_block(a, b)
            values = rs.resample(block[0], a, b_lo, b_hi, clip=self.clip, out_dtype=np.float32)
            del block
            dst = [slice(None)] * 3
            dst[k] = slice(b_lo - n_lo, b_hi - n_lo)
            view[(0, *dst)] = torch.from_numpy(np.ascontiguousarray(values))

    def _block_slices(self) -> int:
        """Network slices per block: the original slices they read hold about :attr:`block_voxels` voxels, at
        least 8 network slices (all of them if the scan is short)."""
        rs, k = self.resampler, self.grid.k
        plane = plane_voxels(self.grid.bbox_t, k)
        reach = 0 if rs.identity else rs.margin + rs._order(k) // 2 + 3
        slices_in = self.block_voxels / plane - 2 * reach
        return max(int(slices_in * rs.out_shape[k] / rs.in_shape[k]), 8)

    def _normalized_block(self, a: int, b: int) -> np.ndarray:
        """Cropped slices [a, b) along transposed axis ``grid.k``, transposed and normalised: float32 (1, ...)."""
        tf, bbox_t, k = self.grid.tf, self.grid.bbox_t, self.grid.k
        index = [slice(*bbox_t[tf.index(j)]) for j in range(3)]
        index[self.axial] = slice(bbox_t[k][0] + a, bbox_t[k][0] + b)
        block = np.asarray(self.hu[tuple(index)], dtype=np.float32)  # a new array: normalised in place
        return self.preprocessing.normalize(block.transpose(tf)[None])

    def _clip_ranges(self, stats: ScanStatistics):
        """The input ranges scikit-image's resize clips to: the scan's, or per slice across the separate axis.

        Without anti-aliasing they follow from the raw extremes (nnU-Net's CT normalisation is monotone);
        with it they are the extremes of the smoothed scan, computed slab by slab.
        """
        rs, normalize = self.resampler, self.preprocessing.normalize
        s, k = rs.separate_axis, rs.axis
        if s == k or rs.identity:
            return None  # every slice the clip looks at lies inside its slab
        if rs.sigma is not None:
            return self._smoothed_ranges()
        if s is None:
            values = np.array([stats.low[0].min(), stats.high[0].max()], np.float32)
            lo, hi = normalize(values[None])[0]
            return float(lo), float(hi)
        a, sl = self.grid.tf[s], slice(*self.grid.bbox_t[s])
        low = normalize(stats.low[a][sl].astype(np.float32)[None])[0]
        high = normalize(stats.high[a][sl].astype(np.float32)[None])[0]
        return low.astype(np.float64), high.astype(np.float64)

    def _smoothed_ranges(self, slab: int = 32):
        """Extremes of the normalised, anti-aliased scan (globally, or per slice across the separate axis)."""
        rs = self.resampler
        k, s = rs.axis, rs.separate_axis
        n = self.grid.bbox_t[k][1] - self.grid.bbox_t[k][0]
        radius = int(4.0 * float(rs.sigma[k]) + 0.5)
        low = high = None
        for start in range(0, n, slab):
            a, b = max(start - radius, 0), min(start + slab + radius, n)
            smooth = rs._smooth(self._normalized_block(a, b)[0])
            index = [slice(None)] * 3
            index[k] = slice(start - a, min(start + slab, n) - a)
            inner = smooth[tuple(index)]
            if s is None:
                lo, hi = np.array([inner.min()]), np.array([inner.max()])
            else:
                other = tuple(d for d in range(3) if d != s)
                lo, hi = inner.min(axis=other), inner.max(axis=other)
            low = lo if low is None else np.minimum(low, lo)
            high = hi if high is None else np.maximum(high, hi)
        return (float(low[0]), float(high[0])) if s is None else (low, high)
