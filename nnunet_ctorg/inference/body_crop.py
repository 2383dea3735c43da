"""Body contour of a CT, the crop to it and the exact undoing of that crop (SPEC §7, paper 001 §2.4).

Per axial slice the voxels in [low_hu, high_hu] (reference code: -300..2000 HU) are taken, their holes
filled and islands smaller than ``min_island_mm2`` removed (tubes, cables). In 3-D every component
that holds at least ``min_part_ml`` of *deep soft tissue* (voxels of ``soft_low_hu..soft_high_hu`` at
least ``depth_mm`` inside the component) is body: trunk, arms, legs and head do; the exam table does not,
whether its board is a thin dense plate or, after hole filling, a solid shell around a foam core, and
neither do blankets and pads. (Choosing the largest component instead lets a table shell win in a leg
or head section of the scan.)

Where the scan's field of view cuts the body (large patients: the image edge, or the scanner's fill value
outside the reconstructed circle; only the data inside that circle are valid, see vtk-dicom issue #27), a lung
or bowel gas opens onto the cut and is no hole of its slice; :func:`close_cut_slices` adds it back. Resampling
blurs the circle's edge (dcm2niix issue #262: padding interpolated as if it were data), and converters may write
the padding as air (vtk-dicom issue #173: NIfTI has no padding value), which no threshold tells from air; there
the padding is told by its constancy (:func:`air_like_padding`): air has noise, padding one value in every slice
(TotalSegmentator's example CT in ``tests/data`` has such corners: -1024 to -1019, each repeated in all 112
slices, 16 positions exactly, 85 within 2 HU).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BodyCropSettings:
    """Parameters of the body contour and crop; defaults follow the reference code of paper 001."""

    low_hu: float = -300.0
    high_hu: float = 2000.0
    min_island_mm2: float = 100.0
    min_part_ml: float = 20.0
    margin_mm: float = 10.0
    soft_low_hu: float = -200.0
    soft_high_hu: float = 250.0
    depth_mm: float = 8.0
    # below any air: the scanner's fill value outside the reconstructed circle (-2048, -3024, ...)
    outside_fov_hu: float = -1500.0
    # chunked prediction: run only the tiles a voxel of the (widened) body mask needs, not all those of its box
    skip_tiles_outside_mask: bool = True

    def __post_init__(self) -> None:
        if not self.low_hu < self.high_hu:
            raise ValueError(f"low_hu must be below high_hu, got {self.low_hu} and {self.high_hu}")
        if not self.soft_low_hu < self.soft_high_hu:
            raise ValueError(f"soft_low_hu must be below soft_high_hu, got {self.soft_low_hu} and {self.soft_high_hu}")
        for name in ("min_island_mm2", "min_part_ml", "margin_mm", "depth_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def filled_slices(hu: np.ndarray, spacing: tuple[float, float, float], axial_axis: int,
                  settings: BodyCropSettings) -> np.ndarray:
    """Voxels in ``[low_hu, high_hu]``, holes filled and islands under ``min_island_mm2`` removed per axial slice."""
    import cc3d
    import fill_voids

    mask = (hu >= settings.low_hu) & (hu <= settings.high_hu)
    in_plane = [s for a, s in enumerate(spacing) if a != axial_axis]
    min_pixels = int(np.ceil(settings.min_island_mm2 / (in_plane[0] * in_plane[1])))
    m = np.moveaxis(mask, axial_axis, 0)  # a view: slices are written into ``mask``
    for z in range(m.shape[0]):
        if m[z].any():
            filled = fill_voids.fill(m[z], in_place=False)
            m[z] = cc3d.dust(filled, threshold=min_pixels, connectivity=8) if min_pixels > 1 else filled
    return mask


def body_contour(hu: np.ndarray, spacing: tuple[float, float, float], axial_axis: int = 0, ap_axis: int = 1,
                 settings: BodyCropSettings = BodyCropSettings()) -> np.ndarray:
    """Boolean body mask of a 3-D CT in HU; ``spacing`` per array axis in mm.

    ``axial_axis`` is the cranio-caudal array axis (slices are taken across it); ``ap_axis`` (the
    anterior-posterior one) is checked but no longer used. Returns an all-False mask when no body is found.
    """
    import cc3d
    import edt

    if hu.ndim != 3:
        raise ValueError(f"body contour needs a 3-D volume, got shape {hu.shape}")
    if axial_axis == ap_axis or {axial_axis, ap_axis} - {0, 1, 2}:
        raise ValueError(f"axial_axis and ap_axis must be two different axes of 0..2, got {axial_axis}, {ap_axis}")
    mask = filled_slices(hu, spacing, axial_axis, settings)
    if not mask.any():
        return mask
    components, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    deep = edt.edt(mask, anisotropy=tuple(float(x) for x in spacing), black_border=False) >= settings.depth_mm
    deep &= (hu >= settings.soft_low_hu) & (hu <= settings.soft_high_hu)
    soft_ml = np.bincount(components[deep], minlength=n + 1) * (float(np.prod(spacing)) / 1000.0)
    soft_ml[0] = 0
    keep = soft_ml >= max(settings.min_part_ml, 1e-9)
    return close_cut_slices(keep[components], hu, spacing, axial_axis, settings)


PADDING_MIN_SLICES = 8  # fewer slices: a column of air could repeat one value by chance
PADDING_TOLERANCE_HU = 2.0  # resampling leaves the padding's value a little off next to the circle
PADDING_MIN_TISSUE_VALUES = 64  # fewer distinct tissue values in a slice: a scan without noise (synthetic)


def air_like_padding(h: np.ndarray, low_hu: float = -300.0, high_hu: float = 2000.0) -> np.ndarray:
    """In-plane mask (of ``h``'s last two axes; slices along the first) of the positions whose value lies below
    ``low_hu`` (not body) and stays within ``PADDING_TOLERANCE_HU`` of it in every slice: padding written as air
    outside the reconstructed circle. Real air has noise (a scan clipped at -1024 keeps most air voxels above the
    clip). All False under ``PADDING_MIN_SLICES`` slices, and for a scan without noise (its middle slice has fewer
    than ``PADDING_MIN_TISSUE_VALUES`` distinct values in ``[low_hu, high_hu]``), where air and lungs repeat one
    value too. Reads the volume slice by slice."""
    first = np.asarray(h[0], np.float32)
    same = first < low_hu
    middle = np.asarray(h[h.shape[0] // 2])
    tissue = middle[(middle >= low_hu) & (middle <= high_hu)]
    if h.shape[0] < PADDING_MIN_SLICES or np.unique(tissue).size < PADDING_MIN_TISSUE_VALUES:
        return np.zeros_like(same)
    for z in range(1, h.shape[0]):
        if not same.any():
            break
        same &= np.abs(np.asarray(h[z], np.float32) - first) <= PADDING_TOLERANCE_HU
    return same


def close_cut_slices(body: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], axial_axis: int,
                     settings: BodyCropSettings = BodyCropSettings(), rim_voxels: int = 2) -> np.ndarray:
    """``body`` (boolean) with each axial slice where the field of view cuts it closed over the cut.

    The fill is the voxels below ``outside_fov_hu`` (the scanner's value outside the reconstructed circle) and
    the padding written as air (:func:`air_like_padding`), its rim the ``rim_voxels`` next to it (partial volume
    where the scan was resampled). A slice is cut where a body voxel lies on the image edge or next to the fill
    or its rim. There each region of the slice outside body, fill and rim that lies mostly inside the convex hull
    of the slice's body (a lung or bowel gas opened by the cut) or is smaller than ``min_island_mm2`` is added,
    and so is the rim within ``rim_voxels`` of what is body then. A region mostly outside the hull (gas along
    much of the cut) is not added. In a cut slice air between two body parts that the cut encloses is added
    too: more tiles run, never fewer. Writes into ``body``.
    """
    import cc3d
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    in_plane = [s for a, s in enumerate(spacing) if a != axial_axis]
    small = settings.min_island_mm2 / (in_plane[0] * in_plane[1])
    b = np.moveaxis(body, axial_axis, 0)  # views: slices are written into ``body``
    h = np.moveaxis(np.asarray(hu), axial_axis, 0)
    edge = np.ones(b.shape[1:], bool)
    edge[1:-1, 1:-1] = False
    padding = air_like_padding(h, settings.low_hu, settings.high_hu)
    for z in range(b.shape[0]):
        if not b[z].any():
            continue
        fill = (h[z] < settings.outside_fov_hu) | padding
        rim, cut_line = np.zeros_like(fill), edge
        if fill.any():
            rim = ndimage.binary_dilation(fill, iterations=rim_voxels) & ~fill
            cut_line = edge | ndimage.binary_dilation(fill | rim)
        if not (b[z] & cut_line).any():
            continue
        hull = convex_hull_image(b[z])
        regions, n = cc3d.connected_components(~b[z] & ~fill & ~rim, connectivity=4, return_N=True)
        size = np.bincount(regions.ravel(), minlength=n + 1)
        inside = (np.bincount(regions[hull], minlength=n + 1) * 2 >= size) | (size < small)
        inside[0] = False
        b[z] |= inside[regions]
        if rim.any():
            b[z] |= rim & ndimage.binary_dilation(b[z], iterations=rim_voxels)
    return body


def body_box(mask: np.ndarray, spacing: tuple[float, float, float], margin_mm: float) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` widened by ``margin_mm`` per side and clipped to the array; ``None`` if empty."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        pad = int(np.ceil(margin_mm / spacing[axis]))
        box.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(box)


@dataclass(frozen=True)
class BodyRegion:
    """The body of a scan on a coarse grid, for the chunked predictor: which tiles to run and which labels to keep.

    ``mask``: the body contour of the scan sampled every ``steps`` voxels (array axes), widened by the margin;
    coarse voxel ``c`` stands for the original voxels ``[c * step, (c + 1) * step)``. ``shape``: the original
    array's; ``box``: one box around the body with the margin (slices of the original array).
    """

    mask: np.ndarray
    steps: tuple[int, int, int]
    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice]

    def __post_init__(self) -> None:
        # summed-area table of the mask, zero-padded in front: any voxel in a box is a difference of eight sums
        dtype = np.int32 if self.mask.size < 2**31 else np.int64
        table = np.zeros(tuple(n + 1 for n in self.mask.shape), dtype)
        table[1:, 1:, 1:] = self.mask.astype(dtype).cumsum(0, dtype=dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
        object.__setattr__(self, "_table", table)

    @property
    def nbytes(self) -> int:
        """What the region holds while a case is predicted (its mask and summed-area table)."""
        return int(self.mask.nbytes + self._table.nbytes)

    def any_in(self, ranges) -> bool:
        """Whether a body voxel lies in the original voxels ``[a, b)`` per array axis (``ranges``)."""
        lo, hi = [], []
        for (a, b), s, n in zip(ranges, self.steps, self.mask.shape):
            a, b = max(int(a), 0), min(int(b), self.shape[len(lo)])
            if a >= b:
                return False
            lo.append(min(a // s, n))
            hi.append(min((b - 1) // s + 1, n))
        t = self._table
        total = 0
        for corner in range(8):
            index = tuple(hi[d] if corner >> d & 1 else lo[d] for d in range(3))
            total += (-1) ** (3 - bin(corner).count("1")) * int(t[index])
        return total > 0

    def region(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        """Boolean body mask of the original voxels ``index`` (three slices with start and stop)."""
        coarse = [np.minimum(np.arange(sl.start, sl.stop) // s, n - 1)
                  for sl, s, n in zip(index, self.steps, self.mask.shape)]
        return self.mask[np.ix_(*coarse)]


def body_region(hu: np.ndarray, spacing, axial: int, ap: int, settings: BodyCropSettings, what: str = "image",
                resolution_mm: float = 4.0) -> BodyRegion | None:
    """The body of the whole scan for the chunked predictor; ``None`` (and a warning) if no body is found.

    The body mask is computed once, on the scan sampled every ``resolution_mm`` (so all chunks agree and it
    costs little RAM), and widened by ``settings.margin_mm`` (a Euclidean distance in mm); the box gets the
    same margin per axis.
    """
    import warnings

    import edt

    steps = tuple(max(1, int(resolution_mm // s)) for s in spacing)
    low = np.asarray(hu[::steps[0], ::steps[1], ::steps[2]])
    low_spacing = tuple(s * k for s, k in zip(spacing, steps))
    mask = body_contour(low, low_spacing, axial, ap, settings)
    box = body_box(mask, low_spacing, settings.margin_mm)
    if box is None:
        warnings.warn(f"{what}: no body found (no part with {settings.min_part_ml:g} ml of soft tissue between "
                      f"{settings.soft_low_hu:g} and {settings.soft_high_hu:g} HU); predicting without the body crop",
                      stacklevel=2)
        return None
    widened = edt.edt(~mask, anisotropy=low_spacing, black_border=False) <= settings.margin_mm
    shape = tuple(int(n) for n in hu.shape)
    box = tuple(slice(b.start * k, min(b.stop * k, n)) for b, k, n in zip(box, steps, shape))
    return BodyRegion(widened, steps, shape, box)


def body_crop_box(hu: np.ndarray, spacing, axial: int, ap: int, settings: BodyCropSettings,
                  what: str = "image", resolution_mm: float = 4.0) -> tuple[slice, ...]:
    """The box of :func:`body_region`; the whole array (and a warning) if no body is found."""
    region = body_region(hu, spacing, axial, ap, settings, what, resolution_mm)
    return tuple(slice(0, n) for n in hu.shape) if region is None else region.box


def image_axes(image) -> tuple[int, int]:
    """Array axes (of ``sitk.GetArrayFromImage``) that run cranio-caudally and anterior-posteriorly.

    Raises ``ValueError`` when the image is oblique enough that slices cannot be called axial.
    """
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)  # columns: image axes in LPS
    axes = []
    for physical, name in ((2, "cranio-caudal"), (1, "anterior-posterior")):
        cosines = np.abs(direction[physical])
        k = int(np.argmax(cosines))
        if cosines[k] < 0.8:
            raise ValueError(f"no image axis runs {name} (direction {np.round(direction.ravel(), 2).tolist()}): "
                             f"the scan is too oblique to be cut into axial chunks")
        axes.append(2 - k)  # image axis k is array axis 2 - k
    return axes[0], axes[1]


def crop_image_to_body(image, settings: BodyCropSettings = BodyCropSettings(), what: str = "image"):
    """(cropped SimpleITK image, box as array slices); the crop keeps its physical position.

    Raises ``ValueError`` naming ``what`` when no body is found.
    """
    import SimpleITK as sitk

    axial, ap = image_axes(image)
    hu = sitk.GetArrayViewFromImage(image)
    spacing = image.GetSpacing()[::-1]
    box = body_box(body_contour(hu, spacing, axial, ap, settings), spacing, settings.margin_mm)
    if box is None:
        raise ValueError(f"{what}: no body found (no voxel between {settings.low_hu:g} and {settings.high_hu:g} HU "
                         f"in a part of at least {settings.min_island_mm2:g} mm²)")
    index = [box[2].start, box[1].start, box[0].start]
    size = [box[2].stop - box[2].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
    return sitk.RegionOfInterest(image, size, index), box


def uncrop_image(cropped, reference, fill: float = 0):
    """Put ``cropped`` back into the grid of ``reference`` (voxels outside the crop = ``fill``).

    The crop must lie on the reference's voxel grid (as :func:`crop_image_to_body` makes it).
    """
    import SimpleITK as sitk

    if not np.allclose(cropped.GetSpacing(), reference.GetSpacing(), atol=1e-4) or not np.allclose(
            cropped.GetDirection(), reference.GetDirection(), atol=1e-4):
        raise ValueError("the cropped image and the reference differ in spacing or direction")
    continuous = reference.TransformPhysicalPointToContinuousIndex(cropped.GetOrigin())
    index = np.round(continuous).astype(int)
    if not np.allclose(continuous, index, atol=1e-3):
        raise ValueError(f"the cropped image is not on the reference's voxel grid (offset {np.round(continuous, 3)})")
    size = np.array(cropped.GetSize())
    if np.any(index < 0) or np.any(index + size > np.array(reference.GetSize())):
        raise ValueError(f"the cropped image (index {index.tolist()}, size {size.tolist()}) is not inside the "
                         f"reference of size {list(reference.GetSize())}")
    array = np.full(reference.GetSize()[::-1], fill, dtype=sitk.GetArrayViewFromImage(cropped).dtype)
    array[index[2]:index[2] + size[2], index[1]:index[1] + size[1], index[0]:index[0] + size[0]] = \
        sitk.GetArrayViewFromImage(cropped)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(reference)
    return out
