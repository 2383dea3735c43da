"""Per-organ volume and HU statistics of a segmented CT (like TotalSegmentator's ``--statistics``)."""

from collections.abc import Mapping

import numpy as np


def organ_statistics(ct: np.ndarray, seg: np.ndarray, spacing: tuple[float, float, float],
                     labels: Mapping[str, int]) -> dict[str, dict[str, float | int | None]]:
    """Organ -> voxels, volume (ml), mean and median HU; organs without voxels get volume 0 and ``None`` HU.

    ``ct`` and ``seg`` are arrays of one shape; ``spacing`` in mm (any axis order, only the product counts).
    """
    from scipy import ndimage

    if ct.shape != seg.shape:
        raise ValueError(f"CT shape {ct.shape} and segmentation shape {seg.shape} differ")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    organs = {name: lab for name, lab in labels.items() if lab != 0 and name not in ("background", "ignore")}
    max_label = max([*organs.values(), 0])
    seg = seg.astype(np.int32, copy=False)
    counts = np.bincount(seg.ravel(), minlength=max_label + 1)
    boxes = ndimage.find_objects(seg, max_label=max_label)
    stats = {}
    for name, lab in sorted(organs.items(), key=lambda item: item[1]):
        n = int(counts[lab])
        if n == 0:
            stats[name] = {"voxels": 0, "volume_ml": 0.0, "mean_hu": None, "median_hu": None}
            continue
        box = boxes[lab - 1]
        values = ct[box][seg[box] == lab].astype(np.float64)
        stats[name] = {"voxels": n, "volume_ml": n * voxel_ml, "mean_hu": float(values.mean()),
                       "median_hu": float(np.median(values))}
    return stats


def statistics_of_files(ct_path, seg_path, labels: Mapping[str, int]) -> dict:
    """:func:`organ_statistics` of a CT file and its segmentation file (same geometry required)."""
    import SimpleITK as sitk

    from nnunet_ctorg.evaluation.evaluate import read_label_array
    from nnunet_ctorg.io import case_name, read_ct, same_geometry

    case = case_name(seg_path)
    ct_img = read_ct(ct_path, f"{case}: CT")
    seg_img, seg = read_label_array(seg_path, f"{case}: segmentation")
    if not same_geometry(ct_img, seg_img):
        raise ValueError(f"{case}: CT and segmentation geometry differ (size {ct_img.GetSize()} vs "
                         f"{seg_img.GetSize()}, or spacing/origin/direction)")
    unknown = sorted(set(np.unique(seg).tolist()) - set(labels.values()))
    if unknown:
        raise ValueError(f"{case}: segmentation has label values {unknown} that the label map does not know")
    return organ_statistics(sitk.GetArrayFromImage(ct_img), seg, ct_img.GetSpacing(), labels)
