"""Body mask of a CT: the patient without the exam table, blankets and outside air."""

import numpy as np


def body_mask(hu: np.ndarray, low_hu: float = -300.0, high_hu: float = 2000.0,
              spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Boolean body mask of a (z, y, x) CT in HU.

    Per axial slice the voxels in [low_hu, high_hu] are taken and their holes filled (lungs,
    bowel gas), then the largest 3-D component is kept: the table and other objects that do
    not touch the patient go; slices where the field of view cuts the body are closed over the cut
    (:func:`~nnunet_ctorg.inference.body_crop.close_cut_slices`; ``spacing`` (z, y, x) in mm sizes
    its small gas regions). Raises ``ValueError`` when nothing is in the HU window.
    """
    import cc3d

    from nnunet_ctorg.inference.body_crop import BodyCropSettings, close_cut_slices, filled_slices

    if hu.ndim != 3:
        raise ValueError(f"body_mask needs a 3-D volume, got shape {hu.shape}")
    # per-slice fill without the island rule, then the largest 3-D component
    settings = BodyCropSettings(low_hu=low_hu, high_hu=high_hu, min_island_mm2=0.0)
    mask = filled_slices(hu, (1.0, 1.0, 1.0), 0, settings)
    if not mask.any():
        raise ValueError(f"no voxel between {low_hu} and {high_hu} HU: no body found")
    body = cc3d.largest_k(mask, k=1, connectivity=6) > 0
    return close_cut_slices(body, hu, spacing, 0, BodyCropSettings(low_hu=low_hu, high_hu=high_hu))
