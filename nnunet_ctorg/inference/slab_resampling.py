"""nnU-Net's image/probability resampling computed slab by slab along one axis, equal to the whole-scan result.

nnU-Net (``resample_data_or_seg_to_shape``, non-segmentation) resizes with scikit-image's ``resize``
(``scipy.ndimage.zoom`` with ``grid_mode=True`` and mode ``nearest``, then a clip to the input's range)
either in 3-D or, for anisotropic spacings, per slice in-plane followed by ``map_coordinates`` of
order ``order_z`` along the low-resolution axis. The sample positions of an output index ``j`` along an
axis are ``(j + 0.5) · n_in / n_out − 0.5``: they depend on the *whole* scan's lengths, so resampling a
slab of the scan with nnU-Net's function puts the samples elsewhere (up to half a voxel at the end of a
300-slice slab). :class:`SlabResampler` computes any range of output slices from a slab of input
slices: every axis is done as nnU-Net's spline interpolation factorises, one axis at a time, with the
whole scan's sample positions; a B-spline prefilter (order > 1) is an infinite filter, so a slab carries
``margin`` extra input slices on each side, enough for the truncation error to fall below 1e-12 of the
signal; the scan's own ends are padded as scipy pads them. Anti-aliasing (the Gaussian of
:mod:`nnunet_ctorg.planning.antialiasing`) is a finite filter and is exact with its radius as margin.

Against ``resample_data_or_seg_to_shape`` on the whole scan the result differs by float64 rounding only
(tests/inference/test_slab_resampling.py).
"""

from dataclasses import dataclass, field

import numpy as np

# scipy.ndimage pads an array by this many edge values before its spline prefilter (mode "nearest")
SCIPY_PREFILTER_PAD = 12
# |pole| of the B-spline prefilter per order (Unser 1999); the filter's influence decays as |pole|^distance
_SPLINE_POLE = {2: 0.1716, 3: 0.2679, 4: 0.3613, 5: 0.4306}


def spline_margin(order: int, tolerance: float = 1e-12) -> int:
    """Input samples a slab needs beyond the samples an order-``order`` spline reads, for ``tolerance``."""
    if order < 0 or order > 5:
        raise ValueError(f"spline order must be in 0..5, got {order}")
    support = order // 2 + 1
    if order < 2:
        return support
    return support + int(np.ceil(np.log(tolerance) / np.log(_SPLINE_POLE[order])))


def sample_positions(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinates of the ``n_out`` output samples when ``n_in`` samples are resized (grid mode)."""
    scale = float(n_in) / n_out
    return scale * (np.arange(n_out) + 0.5) - 0.5


def _weights(n_local: int, coords: np.ndarray, order: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per output coordinate: (input indices, weights) of scipy's spline interpolation, mode 'nearest'.

    Computed by interpolating unit vectors with ``scipy.ndimage.map_coordinates`` (no prefilter), so the
    weights are scipy's own. ``coords`` are local to an input of ``n_local`` samples.
    """
    from scipy import ndimage

    if order == 0:  # nearest: one sample, found by scipy's own rounding
        index = ndimage.map_coordinates(np.arange(n_local, dtype=np.float64), coords[None], order=0, mode="nearest")
        return [(np.array([int(i)]), np.ones(1)) for i in index]
    lo = np.clip(np.floor(coords).astype(int) - order, 0, n_local - 1)
    hi = np.clip(np.floor(coords).astype(int) + order + 2, 1, n_local)
    out = []
    unit = np.zeros(n_local)
    for c, a, b in zip(coords, lo, hi):
        idx = np.arange(a, b)
        w = np.empty(len(idx))
        for k, i in enumerate(idx):
            unit[i] = 1.0
            w[k] = ndimage.map_coordinates(unit, [[c]], order=order, mode="nearest", prefilter=False)[0]
            unit[i] = 0.0
        keep = w != 0
        out.append((idx[keep], w[keep]))
    return out


def resample_axis(x: np.ndarray, axis: int, coords: np.ndarray, order: int) -> np.ndarray:
    """Spline-interpolate float64 ``x`` along ``axis`` at ``coords`` (local), as scipy does (mode 'nearest').

    For order > 1 the samples are padded by scipy's 12 edge values and prefiltered first, so at an end of
    ``x`` the result is scipy's; away from the ends a slab gives the whole array's values (see
    :func:`spline_margin`).
    """
    from scipy import ndimage

    coords = np.asarray(coords, dtype=np.float64)
    if order > 1:  # edge-padded float64 copy, prefiltered in place: one float64 array of the input
        n = x.shape[axis]
        shape = list(x.shape)
        shape[axis] = n + 2 * SCIPY_PREFILTER_PAD
        padded = np.empty(shape, np.float64)
        dst, src = np.moveaxis(padded, axis, 0), np.moveaxis(x, axis, 0)
        dst[SCIPY_PREFILTER_PAD:SCIPY_PREFILTER_PAD + n] = src
        dst[:SCIPY_PREFILTER_PAD] = src[:1]
        dst[SCIPY_PREFILTER_PAD + n:] = src[-1:]
        x = ndimage.spline_filter1d(padded, order, axis=axis, output=padded, mode="nearest")
        coords = coords + SCIPY_PREFILTER_PAD
    src = np.moveaxis(x, axis, 0)
    out = np.empty((len(coords), *src.shape[1:]), dtype=np.float64)
    for j, (idx, w) in enumerate(_weights(src.shape[0], coords, order)):
        np.multiply(src[idx[0]], w[0], out=out[j])
        for i, wi in zip(idx[1:], w[1:]):
            out[j] += wi * src[i]
    return np.moveaxis(out, 0, axis)


def resampling_kind(configuration: dict, which: str) -> dict:
    """The plans' resampling function ``which`` ('data' or 'probabilities') as settings, or a ``ValueError``."""
    name = configuration.get(f"resampling_fn_{which}")
    if name != "resample_data_or_seg_to_shape":
        raise ValueError(f"the plans resample {which} with {name!r}; chunked prediction reproduces nnU-Net's "
                         f"'resample_data_or_seg_to_shape' only (use nnUNetv2_predict for this model)")
    kwargs = dict(configuration.get(f"resampling_fn_{which}_kwargs") or {})
    if kwargs.get("is_seg"):
        raise ValueError(f"resampling_fn_{which}_kwargs has is_seg=True; not supported by chunked prediction")
    return {"order": int(kwargs.get("order", 3)), "order_z": int(kwargs.get("order_z", 0)),
            "force_separate_z": kwargs.get("force_separate_z", False),
            "threshold": kwargs.get("separate_z_anisotropy_threshold")}


@dataclass
class SlabResampler:
    """Whole-scan ``resample_data_or_seg_to_shape`` of one channel, for any output range along ``axis``.

    Args:
        in_shape, out_shape: whole-scan shapes (3-D).
        current_spacing, new_spacing: as passed to nnU-Net's function.
        axis: the slab axis.
        settings: from :func:`resampling_kind`.
        sigma: anti-aliasing Gaussian per axis in input voxels (``None``: none), applied before resizing.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    current_spacing: tuple[float, ...]
    new_spacing: tuple[float, ...]
    axis: int
    settings: dict
    sigma: np.ndarray | None = None
    separate_axis: int | None = field(init=False)

    def __post_init__(self) -> None:
        from nnunetv2.configuration import ANISO_THRESHOLD
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        self.in_shape, self.out_shape = tuple(map(int, self.in_shape)), tuple(map(int, self.out_shape))
        threshold = self.settings["threshold"] if self.settings["threshold"] is not None else ANISO_THRESHOLD
        separate, axis = determine_do_sep_z_and_axis(self.settings["force_separate_z"], self.current_spacing,
                                                     self.new_spacing, threshold)
        self.separate_axis = int(axis) if separate else None
        if self.sigma is not None and not np.any(np.asarray(self.sigma) > 0):
            self.sigma = None

    @property
    def identity(self) -> bool:
        """nnU-Net returns the input unchanged when the shapes agree (no smoothing either)."""
        return self.in_shape == self.out_shape

    def _order(self, a: int) -> int:
        return self.settings["order_z"] if a == self.separate_axis else self.settings["order"]

    @property
    def margin(self) -> int:
        """Extra input slices per side a slab needs along ``axis`` (beyond the samples read)."""
        order = self._order(self.axis)
        m = spline_margin(order) if order > 1 else 0
        if self.sigma is not None and self.sigma[self.axis] > 0:
            m += int(4.0 * float(self.sigma[self.axis]) + 0.5)
        return m

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """Whole-scan input coordinates of output slices ``lo..hi`` along ``axis``."""
        return sample_positions(self.in_shape[self.axis], self.out_shape[self.axis])[lo:hi]

    def source_range(self, lo: int, hi: int) -> tuple[int, int]:
        """Input slices [a, b) along ``axis`` that output slices [lo, hi) need (margins included)."""
        n = self.in_shape[self.axis]
        if self.identity:
            return lo, hi
        c = self.positions(lo, hi)
        order = self._order(self.axis)
        reach = order // 2 + 1 + self.margin
        a = int(np.floor(c.min())) - reach
        b = int(np.floor(c.max())) + reach + 2
        return max(a, 0), min(b, n)

    def resample(self, slab: np.ndarray, slab_start: int, lo: int, hi: int,
                 clip: tuple[float, float] | None = None, out_dtype=np.float32) -> np.ndarray:
        """Output slices [lo, hi) along ``axis`` from input ``slab`` starting at input slice ``slab_start``.

        ``slab`` must span :meth:`source_range` (or reach the scan's ends). ``clip``: the whole scan's
        (min, max) for the 3-D path (scikit-image clips to the input's range); for the separate-z path the
        slices' own ranges are used (exact when the separate axis is ``axis``).
        """
        if self.identity:
            index = [slice(None)] * 3
            index[self.axis] = slice(lo - slab_start, hi - slab_start)
            return slab[tuple(index)]
        a, b = self.source_range(lo, hi)
        if slab_start > a or slab_start + slab.shape[self.axis] < b:
            raise ValueError(f"slab {slab_start}..{slab_start + slab.shape[self.axis]} does not contain the input "
                             f"slices {a}..{b} that outputs {lo}..{hi} need")
        # float64 only where scipy computes in float64; the first spline step makes its own float64 copy
        x = slab if self.sigma is None else self._smooth(slab)
        if self._order(self.axis) <= 1 or self.in_shape[self.axis] == self.out_shape[self.axis]:
            x = np.asarray(x, dtype=np.float64)
        s = self.separate_axis
        # the slab axis first (the only one not whole), then the others in scipy's order
        order_of_axes = [self.axis] + [k for k in range(3) if k != self.axis]
        if s is None:
            for k in order_of_axes:
                x = self._along(x, k, slab_start, lo, hi)
            if clip is not None:
                np.clip(x, clip[0], clip[1], out=x)
        else:
            # scikit-image clips each in-plane slice to that input slice's own range
            other = tuple(k for k in range(3) if k != s)
            if s == self.axis or clip is None:
                smin = np.min(x, axis=other).astype(np.float64)
                smax = np.max(x, axis=other).astype(np.float64)
            else:  # the slices span the whole scan along the slab axis: their ranges come from a pre-pass
                smin, smax = np.asarray(clip[0], np.float64), np.asarray(clip[1], np.float64)
            for k in order_of_axes:
                if k != s:
                    x = self._along(x, k, slab_start, lo, hi)
            shape = [1, 1, 1]
            shape[s] = -1
            np.clip(x, smin.reshape(shape), smax.reshape(shape), out=x)
            x = self._along(x, s, slab_start, lo, hi)
        return x.astype(out_dtype, copy=False)

    def _smooth(self, x: np.ndarray) -> np.ndarray:
        """The anti-aliasing Gaussian, in float32 axis by axis as ``scipy.ndimage.gaussian_filter`` does it."""
        from scipy import ndimage

        out = np.array(x, dtype=np.float32)
        for k in range(3):
            if self.sigma[k] > 0:
                ndimage.gaussian_filter1d(out, float(self.sigma[k]), axis=k, output=out, mode="nearest", truncate=4.0)
        return out

    def _along(self, x: np.ndarray, k: int, slab_start: int, lo: int, hi: int) -> np.ndarray:
        """Resize axis ``k`` of ``x``; along the slab axis only output slices [lo, hi)."""
        n_in, n_out = self.in_shape[k], self.out_shape[k]
        if n_in == n_out:  # scipy interpolates at the samples themselves: the identity up to rounding
            if k != self.axis:
                return x
            index = [slice(None)] * x.ndim
            index[k] = slice(lo - slab_start, hi - slab_start)
            return x[tuple(index)]
        coords = sample_positions(n_in, n_out)
        if k == self.axis:
            coords = coords[lo:hi] - slab_start
        return resample_axis(x, k, coords, self._order(k))
