"""Body mask of a CT: the patient without the exam table, blankets and outside air."""

import numpy as np


def body_mask(hu: np.ndarray, low_hu: float = -300.0, high_hu: float = 2000.0) -> np.ndarray:
    """Boolean body mask of a (z, y, x) CT in HU.

    Per axial slice the voxels in [low_hu, high_hu] are taken and their holes filled (lungs,
    bowel gas), then the largest 3-D component is kept: the table and other objects that do
    not touch the patient go. Raises ``ValueError`` when nothing is in the HU window.
    """
    import cc3d
    import fill_voids

    if hu.ndim != 3:
        raise ValueError(f"body_mask needs a 3-D volume, got shape {hu.shape}")
    mask = (hu >= low_hu) & (hu <= high_hu)
    if not mask.any():
        raise ValueError(f"no voxel between {low_hu} and {high_hu} HU: no body found")
    for z in range(mask.shape[0]):
        if mask[z].any():
            mask[z] = fill_voids.fill(mask[z], in_place=False)
    return cc3d.largest_k(mask, k=1, connectivity=6) > 0
