"""Body mask of a CT: the patient without the exam table, blankets and outside air."""

import numpy as np


def body_mask(hu: np.ndarray, low_hu: float = -300.0, high_hu: float = 2000.0) -> np.ndarray:
    """Boolean body mask of a (z, y, x) CT in HU.

    Per axial slice the voxels in [low_hu, high_hu] are taken and their holes filled (lungs,
    bowel gas), then the largest 3-D component is kept: the table and other objects that do
    not touch the patient go. Raises ``ValueError`` when nothing is in the HU window.
    """
    from nnunet_ctorg.inference.body_crop import BodyCropSettings, body_contour

    if hu.ndim != 3:
        raise ValueError(f"body_mask needs a 3-D volume, got shape {hu.shape}")
    # the body contour without its island and side-part rules: per-slice fill, then the largest component
    settings = BodyCropSettings(low_hu=low_hu, high_hu=high_hu, min_island_mm2=0.0, min_part_ml=float("inf"))
    mask = body_contour(hu, (1.0, 1.0, 1.0), settings=settings)
    if not mask.any():
        raise ValueError(f"no voxel between {low_hu} and {high_hu} HU: no body found")
    return mask
