"""Unsupervised lung and bone labelers of CT-ORG (Rister et al., paper 000 and 003 §III).

``mode="paper"`` runs the published steps exactly; ``mode="improved"`` fixes their known failure
modes: lungs are air *inside the body* whose darkest tenth stays above -950 HU, as parenchyma
does (bowel and stomach gas reach -1000 HU), any number of such pockets above a volume; bone keeps every dense component
inside the body above a volume (ribs that do not touch the spine on abdominal scans), not only
the largest. Arrays are (z, y, x) HU with spacing (z, y, x) in mm; z is the axial direction.
"""

from dataclasses import dataclass

import numpy as np

from nnunet_ctorg.morphology import closing, opening

MODES = ("paper", "improved")


@dataclass(frozen=True)
class LungParameters:
    """Paper defaults: air below -150 HU, a 10 mm bar, a 1 cm diameter opening, two components."""

    air_hu: float = -150.0
    bar_mm: float = 10.0
    opening_diameter_mm: float = 10.0
    n_components: int = 2
    # improved mode only: pockets of at least this volume whose 10th HU percentile is above gas
    min_volume_ml: float = 0.5
    gas_p10_hu: float = -950.0


@dataclass(frozen=True)
class BoneParameters:
    """Paper defaults: cortex above 200 HU, a 2.5 cm diameter closing, then above 0 HU."""

    cortex_hu: float = 200.0
    tissue_hu: float = 0.0
    closing_diameter_mm: float = 25.0
    # improved mode only: dense components of at least this volume whose brightest voxel is cortex-like
    # (contrast-enhanced vessels and kidneys stay below it in portal-venous scans)
    min_volume_ml: float = 0.3
    min_peak_hu: float = 300.0


def _check(hu: np.ndarray, spacing, mode: str) -> tuple[float, float, float]:
    if hu.ndim != 3 or min(hu.shape) < 2:
        raise ValueError(f"the labelers need a 3-D CT, got shape {hu.shape}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing!r}")
    if not np.isfinite(hu).all():
        raise ValueError("the CT contains NaN or infinite values")
    return spacing


def _touching_slice_border(labels: np.ndarray) -> np.ndarray:
    """Component ids present on the in-plane border of any axial slice."""
    border = np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                             labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    return np.unique(border[border > 0])


def _largest(labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    order = np.argsort(counts)[::-1]
    return order[:n][counts[order[:n]] > 0]


def label_lungs(hu: np.ndarray, spacing, mode: str = "paper", params: LungParameters = LungParameters()
                ) -> np.ndarray:
    """Boolean lung mask (with the trachea attached, as in the paper)."""
    import cc3d
    from scipy import ndimage

    spacing = _check(hu, spacing, mode)
    air = hu < params.air_hu  # step 1
    bar = max(int(round(params.bar_mm / spacing[1])), 1)
    closed = ndimage.binary_closing(air, structure=np.ones((1, bar, 1), bool))  # step 2: along y (table wall)
    if mode == "improved":
        from nnunet_ctorg.body import body_mask

        closed &= body_mask(np.asarray(hu, np.float32), spacing=spacing)
    components = cc3d.connected_components(closed, connectivity=26)
    closed[np.isin(components, _touching_slice_border(components))] = False  # step 3
    opened = opening(closed, params.opening_diameter_mm / 2, spacing)  # step 4
    components = cc3d.connected_components(opened, connectivity=26)
    if mode == "paper":
        keep = _largest(components, params.n_components)  # step 5
    else:
        voxel_ml = float(np.prod(spacing)) / 1000.0
        counts = np.bincount(components.ravel())
        big = [i for i in range(1, len(counts)) if counts[i] * voxel_ml >= params.min_volume_ml]
        p10 = ndimage.labeled_comprehension(hu, components, big, lambda v: np.percentile(v, 10), float, 0.0)
        keep = [i for i, p in zip(big, np.atleast_1d(p10)) if p > params.gas_p10_hu]
    seeds = np.isin(components, keep)
    # step 6: reconstruction, the components of the thresholded air touching the seeds
    # (improved: face-connected air inside the body, so that partial-volume bridges to gas do not count)
    if mode == "improved":
        air = closed & air
    air_components = cc3d.connected_components(air, connectivity=26 if mode == "paper" else 6)
    return np.isin(air_components, np.unique(air_components[seeds & air])) & air


def label_bones(hu: np.ndarray, spacing, mode: str = "paper", params: BoneParameters = BoneParameters()
                ) -> np.ndarray:
    """Boolean bone mask."""
    import cc3d
    import fill_voids

    spacing = _check(hu, spacing, mode)
    dense = hu > params.cortex_hu  # step 1
    if mode == "improved":
        from nnunet_ctorg.body import body_mask

        dense &= body_mask(np.asarray(hu, np.float32), spacing=spacing)
    components = cc3d.connected_components(dense, connectivity=26)
    if mode == "paper":
        keep = _largest(components, 1)  # step 2
    else:
        from scipy import ndimage

        counts = np.bincount(components.ravel())
        big = np.flatnonzero(counts * float(np.prod(spacing)) / 1000.0 >= params.min_volume_ml)
        big = big[big > 0]
        peaks = np.atleast_1d(ndimage.maximum(hu, components, big)) if big.size else np.array([])
        keep = big[peaks >= params.min_peak_hu]
    bone = np.isin(components, keep)
    bone = closing(bone, params.closing_diameter_mm / 2, spacing)  # step 3
    bone &= hu > params.tissue_hu  # step 4
    for z in range(bone.shape[0]):  # step 5: holes per axial slice
        if bone[z].any():
            bone[z] = fill_voids.fill(bone[z], in_place=False)
    return bone
