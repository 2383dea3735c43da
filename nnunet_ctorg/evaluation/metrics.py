"""Overlap and surface metrics of one organ, spacing-aware (SPEC §8).

Surfaces are the border voxels of a mask (voxels with a face neighbour outside it; the image
edge counts as outside). Surface distances are Euclidean distances in mm between border-voxel
centres, computed with ``edt`` on the union bounding box of both masks:

- NSD(τ) = (|{a ∈ ∂A : d(a, ∂B) ≤ τ}| + |{b ∈ ∂B : d(b, ∂A) ≤ τ}|) / (|∂A| + |∂B|), counted per
  border voxel (the voxel form of Nikolov et al.'s surface Dice, as MONAI computes it);
- HD95 = max of the two directed 95th percentiles (MONAI's ``compute_hausdorff_distance``);
- ASSD = mean of all distances of both directions together;
- volume difference = prediction − reference in ml.

Empty masks (SPEC §8): both empty → DSC = IoU = NSD = 1, HD95 = ASSD = 0; exactly one empty →
DSC = IoU = NSD = 0 and HD95 = ASSD = NaN (undefined; summaries count them as ``n_undefined``).
"""

from dataclasses import asdict, dataclass

import numpy as np

METRIC_NAMES = ("dsc", "iou", "nsd", "hd95", "assd", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml")


@dataclass(frozen=True)
class OrganMetrics:
    """Metrics of one organ in one case; distances in mm, volumes in ml."""

    dsc: float
    iou: float
    nsd: float
    hd95: float
    assd: float
    volume_ref_ml: float
    volume_pred_ml: float
    volume_diff_ml: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one of their six face neighbours outside it (or outside the array)."""
    inner = mask.copy()
    for axis in range(mask.ndim):
        n = mask.shape[axis]
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        inner[tuple(lo)] &= mask[tuple(hi)]
        inner[tuple(hi)] &= mask[tuple(lo)]
        edge = [slice(None)] * mask.ndim
        for index in (0, n - 1):
            edge[axis] = index
            inner[tuple(edge)] = False
    return mask & ~inner


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    box = []
    for axis in range(mask.ndim):
        any_other = np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
        idx = np.flatnonzero(any_other)
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], threads: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of ``ref`` to the border of ``pred``, and back.

    Both masks must be non-empty. ``spacing`` is per array axis.
    """
    import edt

    border_ref, border_pred = border(ref), border(pred)
    d_ref_to_pred = edt.edt(~border_pred, anisotropy=tuple(float(s) for s in spacing), black_border=False,
                            parallel=threads)[border_ref]
    d_pred_to_ref = edt.edt(~border_ref, anisotropy=tuple(float(s) for s in spacing), black_border=False,
                            parallel=threads)[border_pred]
    return d_ref_to_pred, d_pred_to_ref


def organ_metrics(ref: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float = 2.0,
                  box: tuple[slice, ...] | None = None, threads: int = 1) -> OrganMetrics:
    """All metrics of one organ from two boolean masks of the same shape.

    Args:
        ref, pred: boolean masks, array axes matching ``spacing``.
        spacing: voxel size in mm per array axis.
        tolerance_mm: NSD tolerance τ.
        box: bounding box (slices) known to contain both masks; computed when ``None``.
        threads: threads for the distance transform.
    """
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction shapes differ: {ref.shape} vs {pred.shape}")
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if box is None:
        box = _bounding_box(ref | pred)
    if box is None:  # both empty
        return OrganMetrics(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # one voxel of background around the union box, so border voxels are found as in the full image
    pad_box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, ref.shape))
    a, b = ref[pad_box].astype(bool, copy=False), pred[pad_box].astype(bool, copy=False)
    n_ref, n_pred = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    n_both = int(np.count_nonzero(a & b))
    vol_ref, vol_pred = n_ref * voxel_ml, n_pred * voxel_ml
    if n_ref == 0 and n_pred == 0:
        return OrganMetrics(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if n_ref == 0 or n_pred == 0:
        return OrganMetrics(0.0, 0.0, 0.0, float("nan"), float("nan"), vol_ref, vol_pred, vol_pred - vol_ref)
    dsc = 2.0 * n_both / (n_ref + n_pred)
    iou = n_both / (n_ref + n_pred - n_both)
    d_rp, d_pr = surface_distances(a, b, spacing, threads)
    nsd = (np.count_nonzero(d_rp <= tolerance_mm) + np.count_nonzero(d_pr <= tolerance_mm)) / (d_rp.size + d_pr.size)
    hd95 = max(float(np.percentile(d_rp, 95)), float(np.percentile(d_pr, 95)))
    assd = float((d_rp.sum(dtype=np.float64) + d_pr.sum(dtype=np.float64)) / (d_rp.size + d_pr.size))
    return OrganMetrics(dsc, iou, float(nsd), hd95, assd, vol_ref, vol_pred, vol_pred - vol_ref)


def label_boxes(seg: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label 0..max_label (``None`` where absent), in one pass."""
    from scipy import ndimage

    found = ndimage.find_objects(seg.astype(np.int32, copy=False) if seg.dtype.kind not in "iu" else seg,
                                 max_label=max_label)
    return [None] + list(found)


def union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))
