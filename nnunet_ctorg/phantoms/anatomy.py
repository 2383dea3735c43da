"""Seeded whole-body-like CT phantoms in Hounsfield units, with structure-level truth.

The body is described in anatomical millimetres: x from the patient's right to left, y from
anterior to posterior (LPS), S the distance below the vertex. Shapes (ellipsoids, tubes,
profiled cylinders) are painted in order, later ones over earlier ones, each only inside its
bounding box and in slabs of slices so that 512 x 512 x 600 volumes stay within a few GB.
Every labelled voxel carries a TotalSegmentator v2 structure id, from which the CT-ORG,
AbdomenCT-1K and default unified label maps are derived.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_ctorg.label_scheme import LabelScheme
from nnunet_ctorg.labels import TOTALSEG_V2_STRUCTURES

STRUCTURE_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(TOTALSEG_V2_STRUCTURES)}

# Field-of-view presets: S range (mm below the vertex, before scaling) and in-plane width (mm).
FIELDS_OF_VIEW: dict[str, tuple[float, float, float]] = {
    "abdomen": (480.0, 950.0, 460.0),
    "thorax_abdomen": (280.0, 950.0, 460.0),
    "head_knee": (0.0, 1260.0, 580.0),
}

AIR, FAT, MUSCLE, SKIN, WATER, GAS = -1000.0, -95.0, 50.0, 30.0, 8.0, -950.0
CORTEX, CANCELLOUS = 650.0, 180.0

# Mean HU of the soft organs: (non-contrast, portal-venous).
ORGAN_HU: dict[str, tuple[float, float]] = {
    "liver": (55.0, 105.0),
    "spleen": (45.0, 115.0),
    "kidney": (32.0, 160.0),
    "pancreas": (40.0, 95.0),
    "blood": (42.0, 160.0),
    "brain": (35.0, 38.0),
    "lung": (-850.0, -845.0),
    "bowel": (30.0, 60.0),
}

VERTEBRAE: tuple[str, ...] = tuple(
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
)

Region = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Phantom:
    """A phantom CT and its truth.

    Attributes:
        ct: HU as int16, array order (z, y, x); z index 0 is the most caudal slice.
        structures: TotalSegmentator v2 structure ids (``STRUCTURE_IDS``), uint8, 0 = none.
        spacing: voxel size (x, y, z) in mm, SimpleITK order.
        origin: physical position (x, y, z) of voxel (0, 0, 0) in mm (LPS).
        direction: SimpleITK direction cosines; diag(-1, -1, 1) as in NIfTI files of CT-ORG and
            TotalSegmentator (array x runs to the patient's right, y to anterior).
        seed, fov, contrast: how it was generated.
    """

    ct: np.ndarray
    structures: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    seed: int
    fov: str
    contrast: bool

    def structure_names(self) -> list[str]:
        """Names of the structures present in this phantom, in id order."""
        present = np.flatnonzero(np.bincount(self.structures.ravel(), minlength=len(STRUCTURE_IDS) + 1))
        return [TOTALSEG_V2_STRUCTURES[i - 1] for i in present if i > 0]

    def mask(self, structure: str) -> np.ndarray:
        """Binary mask (uint8) of one structure."""
        if structure not in STRUCTURE_IDS:
            raise ValueError(f"unknown structure name {structure!r}")
        return (self.structures == STRUCTURE_IDS[structure]).astype(np.uint8)

    def organ_labels(self, scheme: LabelScheme | None = None) -> np.ndarray:
        """Label map of a scheme's organs from the structures (default: the unified default scheme)."""
        scheme = scheme or LabelScheme.load(None)
        return scheme.totalseg_lookup_table()[self.structures]

    def to_sitk(self, array: np.ndarray):
        """SimpleITK image of ``array`` (same shape as ``ct``) with the phantom's geometry."""
        import SimpleITK as sitk

        if array.shape != self.ct.shape:
            raise ValueError(f"array shape {array.shape} does not match the phantom shape {self.ct.shape}")
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def ellipsoid(center: Sequence[float], radii: Sequence[float], rotation: np.ndarray | None = None):
    """Region and bounding box (lo, hi) of an ellipsoid, optionally rotated about its centre."""
    c = np.asarray(center, dtype=np.float32)
    r = np.asarray(radii, dtype=np.float32)
    rot = None if rotation is None else np.asarray(rotation, dtype=np.float32)

    def region(x, y, s):
        d = (x - c[0], y - c[1], s - c[2])
        if rot is not None:
            d = tuple(rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3))
        return (d[0] / r[0]) ** 2 + (d[1] / r[1]) ** 2 + (d[2] / r[2]) ** 2 <= 1

    ext = np.full(3, r.max()) if rot is not None else r
    return region, c - ext, c + ext


def _box(lo: Sequence[float], hi: Sequence[float]):
    lo_, hi_ = np.asarray(lo, np.float32), np.asarray(hi, np.float32)

    def region(x, y, s):
        return (x >= lo_[0]) & (x <= hi_[0]) & (y >= lo_[1]) & (y <= hi_[1]) & (s >= lo_[2]) & (s <= hi_[2])

    return region, lo_, hi_


class _Canvas:
    """The volume being painted, with anatomical coordinates of every voxel centre."""

    def __init__(self, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float],
                 x0: float, y0: float, s_bottom: float, scale: float, slab: int = 32) -> None:
        nz, ny, nx = shape
        sx, sy, sz = spacing_mm
        self.ct = np.full(shape, AIR, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)
        # anatomical coordinates = physical / scale
        self.xs = ((x0 + np.arange(nx) * sx) / scale).astype(np.float32)
        self.ys = ((y0 + np.arange(ny) * sy) / scale).astype(np.float32)
        self.ss = ((s_bottom - np.arange(nz) * sz) / scale).astype(np.float32)
        self.voxel = np.array(spacing_mm) / scale  # voxel size in anatomical mm
        self.slab = slab

    @staticmethod
    def _index_range(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
        inside = np.flatnonzero((coords >= lo) & (coords <= hi))
        return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)

    def paint(self, region: Region, lo: Sequence[float], hi: Sequence[float], hu: float | None = None,
              label: str | int | None = None, where: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
              ) -> None:
        """Set HU and/or label where ``region`` holds inside the box [lo, hi] (anatomical mm).

        ``label`` is a structure name, 0 to clear, or None to keep; ``where(labels, ct)``
        restricts painting further (e.g. vessels only inside the lungs).
        """
        x_lo, x_hi = self._index_range(self.xs, lo[0], hi[0])
        y_lo, y_hi = self._index_range(self.ys, lo[1], hi[1])
        z_lo, z_hi = self._index_range(self.ss, lo[2], hi[2])
        if x_lo == x_hi or y_lo == y_hi or z_lo == z_hi:
            return
        sid = STRUCTURE_IDS[label] if isinstance(label, str) else label
        x = self.xs[None, None, x_lo:x_hi]
        y = self.ys[None, y_lo:y_hi, None]
        for z0 in range(z_lo, z_hi, self.slab):
            z1 = min(z0 + self.slab, z_hi)
            s = self.ss[z0:z1, None, None]
            m = np.broadcast_to(region(x, y, s), (z1 - z0, y_hi - y_lo, x_hi - x_lo))
            window = (slice(z0, z1), slice(y_lo, y_hi), slice(x_lo, x_hi))
            if where is not None:
                m = m & where(self.labels[window], self.ct[window])
            if hu is not None:
                self.ct[window][m] = hu
            if sid is not None:
                self.labels[window][m] = sid

    def paint_ellipsoid(self, center, radii, hu=None, label=None, rotation=None, where=None) -> None:
        region, lo, hi = ellipsoid(center, radii, rotation)
        self.paint(region, lo, hi, hu, label, where)

    def paint_bone_ellipsoid(self, center, radii, label, rotation=None, cortex_mm: float = 2.5) -> None:
        """Bone with a cortical shell: cortex HU outside, cancellous HU within."""
        self.paint_ellipsoid(center, radii, CORTEX, label, rotation)
        inner = [max(r - cortex_mm, 0.0) for r in radii]
        if min(inner) > 0.5 * self.voxel.min():
            self.paint_ellipsoid(center, inner, CANCELLOUS, None, rotation)

    def paint_tube(self, points: Sequence[Sequence[float]], radius: float | Sequence[float], hu=None, label=None,
                   where=None, min_radius_voxels: float = 0.0) -> None:
        """Tube along a polyline, as balls every half radius; radius may vary per point."""
        pts = np.asarray(points, dtype=np.float64)
        radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(pts),))
        for (p, q), (ra, rb) in zip(zip(pts[:-1], pts[1:]), zip(radii[:-1], radii[1:])):
            n = max(int(np.ceil(np.linalg.norm(q - p) / max(0.5 * min(ra, rb), 0.25 * self.voxel.min()))), 1)
            for t in np.linspace(0.0, 1.0, n + 1):
                r = max((1 - t) * ra + t * rb, min_radius_voxels * self.voxel.max())
                if r > 0:
                    self.paint_ellipsoid((1 - t) * p + t * q, (r, r, r), hu, label, where=where)

    def paint_bone_tube(self, points, radius: float, label: str, cortex_mm: float = 1.5,
                        marrow_hu: float = CANCELLOUS) -> None:
        self.paint_tube(points, radius, CORTEX, label, min_radius_voxels=0.5)
        if radius - cortex_mm > 0.5 * self.voxel.min():
            self.paint_tube(points, radius - cortex_mm, marrow_hu, None)


def _interp(s: np.ndarray, knots: Sequence[float], values: Sequence[float]) -> np.ndarray:
    return np.interp(s, knots, values).astype(np.float32)


# Trunk cross-section (semi-axes in mm) along S, and spine position.
_TRUNK_S = (262.0, 300.0, 350.0, 450.0, 550.0, 650.0, 750.0, 850.0, 905.0)
_TRUNK_RX = (120.0, 182.0, 175.0, 165.0, 160.0, 150.0, 158.0, 172.0, 165.0)
_TRUNK_RY = (70.0, 98.0, 108.0, 112.0, 110.0, 105.0, 105.0, 108.0, 100.0)
_SPINE_S = (200.0, 300.0, 450.0, 620.0, 790.0, 880.0)
_SPINE_Y = (5.0, 35.0, 55.0, 45.0, 45.0, 80.0)


def _body_region(shrink: float, with_arms: bool) -> Region:
    """Region of the whole body surface moved inwards by ``shrink`` mm."""

    def region(x, y, s):
        rx = _interp(s, _TRUNK_S, _TRUNK_RX) - shrink
        ry = _interp(s, _TRUNK_S, _TRUNK_RY) - shrink
        trunk = (s >= 262) & (s <= 905) & ((x / rx) ** 2 + (y / ry) ** 2 <= 1)
        head = ((x / (80 - shrink)) ** 2 + (y / (100 - shrink)) ** 2 + ((s - 110) / (112 - shrink)) ** 2) <= 1
        neck = (s >= 190) & (s <= 290) & ((x / (55 - shrink)) ** 2 + ((y - 10) / (58 - shrink)) ** 2 <= 1)
        cx = _interp(s, (850.0, 1270.0), (85.0, 95.0))
        rl = _interp(s, (850.0, 1270.0), (88.0, 62.0)) - shrink
        legs = (s >= 850) & ((((np.abs(x) - cx) / rl) ** 2 + (y / rl) ** 2) <= 1)
        body = trunk | head | neck | legs
        if with_arms:
            arms = (s >= 290) & (s <= 830) & (((np.abs(x) - 238) / (42 - shrink)) ** 2
                                               + ((y - 10) / (42 - shrink)) ** 2 <= 1)
            body = body | arms
        return body

    return region


def generate_phantom(seed: int = 0, fov: str = "abdomen",
                     spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
                     noise_hu: float | None = None, contrast: bool | None = None,
                     table: bool = True) -> Phantom:
    """Generate one phantom CT.

    Args:
        seed: Seeds everything: body scale, organ positions and sizes, contrast phase, field
            of view jitter, bowel gas and noise. The same seed gives the same phantom.
        fov: ``"abdomen"``, ``"thorax_abdomen"`` or ``"head_knee"`` (arms at the sides).
        spacing: voxel size (x, y, z) in mm; anisotropic spacing is the norm in CT.
        noise_hu: standard deviation of the Gaussian image noise; default drawn in [8, 20].
        contrast: portal-venous contrast (True) or non-contrast (False); default drawn.
        table: draw the exam table and its pad under the patient.
    """
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"fov must be one of {sorted(FIELDS_OF_VIEW)}, got {fov!r}")
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing!r}")
    if noise_hu is not None and noise_hu < 0:
        raise ValueError(f"noise_hu must be >= 0, got {noise_hu!r}")

    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(0.92, 1.08))
    contrast = bool(rng.random() < 0.5) if contrast is None else bool(contrast)
    noise_hu = float(rng.uniform(8.0, 20.0)) if noise_hu is None else float(noise_hu)
    phase = 1 if contrast else 0

    def hu(organ: str) -> float:
        return ORGAN_HU[organ][phase] + float(rng.normal(0.0, 4.0))

    def jit(v: Sequence[float], sd: float = 4.0) -> np.ndarray:
        return np.asarray(v, dtype=np.float64) + rng.normal(0.0, sd, size=len(v))

    def grow(r: Sequence[float], low: float = 0.9, high: float = 1.1) -> np.ndarray:
        return np.asarray(r, dtype=np.float64) * rng.uniform(low, high)

    s_top, s_bottom, width = FIELDS_OF_VIEW[fov]
    s_top = max(s_top + rng.uniform(-15, 15), 0.0) * scale
    s_bottom = (s_bottom + rng.uniform(-15, 15)) * scale
    sx, sy, sz = spacing
    nx, ny = int(round(width / sx)), int(round(width / sy))
    nz = int(round((s_bottom - s_top) / sz)) + 1
    x0 = -0.5 * (nx - 1) * sx
    y0 = 25.0 * scale - 0.5 * (ny - 1) * sy  # the table sits posterior (y > 0)
    cv = _Canvas((nz, ny, nx), spacing, x0, y0, s_bottom, scale)
    arms = fov == "head_knee"

    # Body: skin, subcutaneous fat, muscle.
    fat_mm = float(rng.uniform(10.0, 30.0))
    everywhere = (np.full(3, -1e4), np.full(3, 1e4))
    cv.paint(_body_region(0.0, arms), *everywhere, SKIN)
    cv.paint(_body_region(2.0, arms), *everywhere, FAT)
    cv.paint(_body_region(fat_mm, arms), *everywhere, MUSCLE)

    # Abdominal cavity: visceral fat with bowel loops, some holding gas.
    def cavity(x, y, s):
        rx = _interp(s, _TRUNK_S, _TRUNK_RX) - fat_mm - 25
        ry = _interp(s, _TRUNK_S, _TRUNK_RY) - fat_mm - 30
        return (s >= 560) & (s <= 880) & ((x / rx) ** 2 + ((y + 10) / ry) ** 2 <= 1)

    cv.paint(cavity, (-200, -150, 560), (200, 150, 880), FAT + 5)
    for _ in range(30):
        c = (rng.uniform(-110, 110), rng.uniform(-70, 40), rng.uniform(660, 870))
        r = rng.uniform(12, 28, size=3)
        cv.paint_ellipsoid(c, r, hu("bowel"), where=lambda lab, ct: (ct == np.float32(FAT + 5)) | (ct > 0))
        if rng.random() < 0.4:
            cv.paint_ellipsoid(c, 0.6 * r, GAS)

    # Head: skull and brain.
    cv.paint_ellipsoid((0, 0, 110), (75, 95, 106), CORTEX, "skull")
    cv.paint_ellipsoid((0, 0, 110), (68, 88, 99), hu("brain"), "brain")

    # Thorax: lungs by lobe, below the diaphragm domes and inside the rib cage.
    def dome_right(x, y):
        return 540 + 0.004 * (x + 70) ** 2 + 0.003 * y**2

    def dome_left(x, y):
        return 555 + 0.004 * (x - 75) ** 2 + 0.003 * y**2

    def lung(center, radii, dome, left: bool) -> Region:
        ell, _, _ = ellipsoid(center, radii)

        def region(x, y, s):
            rx = _interp(s, _TRUNK_S, _TRUNK_RX) - fat_mm - 12
            ry = _interp(s, _TRUNK_S, _TRUNK_RY) - fat_mm - 10
            side = (x > 22) if left else (x < -22)
            return ell(x, y, s) & (s < dome(x, y)) & side & ((x / rx) ** 2 + (y / ry) ** 2 <= 1)

        return region

    lung_hu = hu("lung")
    rl_c, rl_r = jit((-80, 10, 450)), grow((70, 92, 152))
    ll_c, ll_r = jit((80, 10, 455)), grow((66, 92, 147))
    right, left = lung(rl_c, rl_r, dome_right, False), lung(ll_c, ll_r, dome_left, True)
    box_r = (rl_c - rl_r, rl_c + rl_r)
    box_l = (ll_c - ll_r, ll_c + ll_r)

    def fissure(x, y, s):
        return s > 430 - 0.9 * (y - 10)

    cv.paint(lambda x, y, s: right(x, y, s) & fissure(x, y, s), *box_r, lung_hu, "lung_lower_lobe_right")
    cv.paint(lambda x, y, s: right(x, y, s) & ~fissure(x, y, s) & (s > 440), *box_r, lung_hu,
             "lung_middle_lobe_right")
    cv.paint(lambda x, y, s: right(x, y, s) & ~fissure(x, y, s) & (s <= 440), *box_r, lung_hu,
             "lung_upper_lobe_right")
    cv.paint(lambda x, y, s: left(x, y, s) & fissure(x, y, s), *box_l, lung_hu, "lung_lower_lobe_left")
    cv.paint(lambda x, y, s: left(x, y, s) & ~fissure(x, y, s), *box_l, lung_hu, "lung_upper_lobe_left")

    # Pulmonary vessels: tapering branches from each hilum, kept inside the lungs (labelled lung).
    lung_ids = np.array([STRUCTURE_IDS[n] for n in STRUCTURE_IDS if n.startswith("lung_")], dtype=np.uint8)
    in_lung = lambda labels, ct: np.isin(labels, lung_ids)  # noqa: E731
    blood = hu("blood")
    for sign in (-1, 1):
        hilum = np.array([sign * 45.0, 5.0, 445.0])
        for _ in range(22):
            d = rng.normal(size=3) * np.array([0.6, 1.0, 1.6]) + np.array([sign * 0.9, 0.0, 0.0])
            d /= np.linalg.norm(d)
            length = rng.uniform(60, 150)
            mid = hilum + 0.5 * length * d + rng.normal(0, 8, 3)
            cv.paint_tube([hilum, mid, hilum + length * d], [4.5, 3.0, 1.2], blood, None, where=in_lung)

    # Mediastinum: heart, aorta, trachea and main bronchi.
    cv.paint_ellipsoid(jit((25, -30, 490)), grow((62, 50, 55)), blood, "heart", _rotation("z", 30))
    aorta = [(15, -20, 470), (10, -10, 390), (15, 20, 375), (20, 38, 420), (18, 42, 600), (12, 40, 790)]
    cv.paint_tube(aorta, [14, 13, 12, 11, 10, 9], blood, "aorta")
    for sign, name in ((1, "iliac_artery_left"), (-1, "iliac_artery_right")):
        cv.paint_tube([(12, 40, 790), (sign * 55, 25, 870), (sign * 85, 5, 930)], 6, blood, name)
    airway = [(0, -15, 230), (0, -8, 400)]
    cv.paint_tube(airway, 9, AIR, "trachea")
    for sign in (-1, 1):
        cv.paint_tube([(0, -8, 400), (sign * 45, 5, 440)], 6, AIR, None)

    # Upper abdomen.
    lc = jit((-65, 0, 615))
    liver_main, lo, hi = ellipsoid(lc, grow((95, 90, 80)))
    liver_left, lo2, hi2 = ellipsoid(lc + np.array([75, -45, -25]), grow((65, 40, 40)))
    liver_hu = hu("liver")
    cv.paint(lambda x, y, s: (liver_main(x, y, s) | liver_left(x, y, s)) & (s > dome_right(x, y) + 4),
             np.minimum(lo, lo2), np.maximum(hi, hi2), liver_hu, "liver")
    in_liver = lambda labels, ct: labels == STRUCTURE_IDS["liver"]  # noqa: E731
    for _ in range(6):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        cv.paint_tube([lc, lc + rng.uniform(40, 80) * d], [6, 2], liver_hu + (-15 if phase == 0 else 40),
                      None, where=in_liver)
    cv.paint_ellipsoid(lc + jit((10, -50, 55)), grow((18, 18, 35)), WATER + 4, "gallbladder")
    sc = jit((65, -35, 600))
    cv.paint(lambda x, y, s: ellipsoid(sc, (50, 40, 60))[0](x, y, s) & (s > dome_left(x, y) + 4),
             sc - 60, sc + 60, hu("bowel"), "stomach")
    cv.paint(lambda x, y, s: (y < sc[1] - 5) & (s < sc[2] - 15), sc - 60, sc + 60, GAS,
             where=lambda labels, ct: labels == STRUCTURE_IDS["stomach"])
    cv.paint_ellipsoid(jit((100, 55, 600)), grow((32, 55, 55)), hu("spleen"), "spleen", _rotation("z", 30))
    kidney_hu = hu("kidney")
    for sign, name, s_c in ((-1, "kidney_right", 690.0), (1, "kidney_left", 672.0)):
        c = jit((sign * 72, 55, s_c))
        tilt = _rotation("z", -sign * 20) @ _rotation("y", sign * 12)
        cv.paint_ellipsoid(c, grow((30, 27, 55)), kidney_hu, name, tilt)
        cv.paint_ellipsoid(c + np.array([-sign * 16, -4, 0]), (10, 10, 22), WATER, None)
    pancreas = np.array([(90, 45, 630), (50, 15, 640), (10, 0, 648), (-30, -10, 660), (-40, -5, 685)])
    cv.paint_tube(pancreas + rng.normal(0, 3, pancreas.shape), grow([10, 12, 13, 16, 15]), hu("pancreas"), "pancreas")

    # Pelvis: bladder.
    cv.paint_ellipsoid(jit((0, -45, 900)), grow((45, 38, 35), 0.7, 1.1), WATER, "urinary_bladder")

    # Spine: vertebral bodies with cortex, posterior elements, spinal canal; sacrum.
    levels = np.concatenate([np.linspace(200, 300, 8), np.linspace(300, 620, 13)[1:], np.linspace(620, 790, 6)[1:]])
    for i, name in enumerate(VERTEBRAE):
        top, bottom = levels[i], levels[i + 1]
        sc_ = 0.5 * (top + bottom)
        height = bottom - top
        yc = float(_interp(np.float32(sc_), _SPINE_S, _SPINE_Y))
        t = i / (len(VERTEBRAE) - 1)
        rx, ry = 10 + 12 * t, 8 + 9 * t
        label = f"vertebrae_{name}"
        cv.paint_bone_ellipsoid((0, yc, sc_), (rx, ry, 0.42 * height), label, cortex_mm=2.0)
        cv.paint_bone_ellipsoid((0, yc + ry + 24, sc_), (5, 20, 0.3 * height), label, cortex_mm=1.5)
        cv.paint_bone_ellipsoid((0, yc + ry + 8, sc_), (rx + 22, 6, 0.25 * height), label, cortex_mm=1.5)
        for sign in (-1, 1):
            # pedicles join body and arch; articular processes meet those of the next levels (facets)
            cv.paint_bone_ellipsoid((sign * 0.6 * rx, yc + ry, sc_), (4, 8, 0.3 * height), label, cortex_mm=1.5)
            cv.paint_bone_ellipsoid((sign * 0.7 * rx, yc + ry + 10, sc_), (5, 6, 0.56 * height), label, cortex_mm=1.5)
        cv.paint_ellipsoid((0, yc + ry + 9, sc_), (7, 7, 0.5 * height), WATER + 10, "spinal_cord")
    s1 = jit((0, 48, 803), 1.0)
    cv.paint_bone_ellipsoid(s1, (24, 17, 11), "vertebrae_S1", cortex_mm=2.0)
    for sign in (-1, 1):  # S1's articular processes meet L5's
        cv.paint_bone_ellipsoid((sign * 15, s1[1] + 22, 795), (5, 12, 14), "vertebrae_S1", cortex_mm=1.5)
    cv.paint_bone_ellipsoid(jit((0, 68, 850), 2.0), (44, 17, 38), "sacrum", _rotation("x", 35))
    cv.paint_bone_tube([(0, s1[1] + 2, 810), (0, 60, 828)], 10.0, "sacrum")  # S1 continues into the sacrum

    # Ribs: arcs from the thoracic vertebrae round the inside of the chest wall, descending.
    thoracic = levels[7:20]
    rib_end = (-55, -60, -62, -65, -65, -62, -58, -35, -25, -15, 15, 35)
    rib_drop = (25, 40, 50, 58, 64, 70, 74, 72, 66, 55, 40, 30)
    for k in range(12):
        s_attach = 0.5 * (thoracic[k] + thoracic[k + 1])
        rx = float(_interp(np.float32(s_attach), _TRUNK_S, _TRUNK_RX)) - fat_mm - 6
        ry = float(_interp(np.float32(s_attach), _TRUNK_S, _TRUNK_RY)) - fat_mm - 5
        theta = np.deg2rad(np.linspace(78, rib_end[k], 14))
        for sign, side in ((1, "left"), (-1, "right")):
            path = np.stack([sign * rx * np.cos(theta), ry * np.sin(theta),
                             s_attach + rib_drop[k] * (78 - np.rad2deg(theta)) / (78 - rib_end[k])], axis=1)
            # the rib head articulates with its vertebra's transverse process
            t = (7 + k) / (len(VERTEBRAE) - 1)
            y_spine = float(_interp(np.float32(s_attach), _SPINE_S, _SPINE_Y))
            head = (sign * (10 + 12 * t + 16), y_spine + 8 + 9 * t + 8, s_attach)
            path = np.vstack([head, path])
            cv.paint_bone_tube(path, 6.0 if k == 0 else 5.0, f"rib_{side}_{k + 1}")
    front = float(_interp(np.float32(420.0), _TRUNK_S, _TRUNK_RY)) - fat_mm
    region, lo, hi = _box((-14, -front + 4, 320), (14, -front + 18, 520))
    cv.paint(region, lo, hi, CORTEX, "sternum")
    region, lo, hi = _box((-11, -front + 6.5, 322), (11, -front + 15.5, 518))
    cv.paint(region, lo, hi, CANCELLOUS)

    # Shoulder girdle and arms.
    for sign, side in ((1, "left"), (-1, "right")):
        cv.paint_bone_tube([(sign * 20, -front + 18, 302), (sign * 80, -front + 24, 294), (sign * 150, 0, 290)],
                           7.0, f"clavicula_{side}")
        cv.paint_ellipsoid((sign * 105, 75, 390), (40, 6, 75), 400.0, f"scapula_{side}", _rotation("z", -sign * 25))
        if arms:
            cv.paint_bone_ellipsoid((sign * 232, 10, 306), (20, 20, 20), f"humerus_{side}")
            cv.paint_bone_tube([(sign * 236, 10, 310), (sign * 238, 10, 600)], 11.0, f"humerus_{side}",
                               cortex_mm=3.0, marrow_hu=60.0)

    # Hips and femurs.
    for sign, side in ((1, "left"), (-1, "right")):
        hip = f"hip_{side}"
        cv.paint_bone_ellipsoid((sign * 92, 35, 822), (60, 12, 55), hip, _rotation("z", -sign * 35), cortex_mm=2.0)
        cv.paint_bone_tube([(sign * 62, 58, 840), (sign * 38, 66, 845)], 8.0, hip)  # sacroiliac joint
        cv.paint_bone_ellipsoid((sign * 95, 15, 912), (30, 28, 42), hip)
        cv.paint_bone_tube([(sign * 85, -15, 915), (sign * 12, -60, 925)], 10.0, hip)
        femur = f"femur_{side}"
        cv.paint_bone_ellipsoid((sign * 95, 10, 918), (24, 24, 24), femur, cortex_mm=2.0)
        cv.paint_bone_tube([(sign * 95, 10, 918), (sign * 128, 15, 945)], 16.0, femur, cortex_mm=2.5)
        cv.paint_bone_tube([(sign * 125, 15, 950), (sign * 95, 10, 1265)], 14.0, femur, cortex_mm=5.0,
                           marrow_hu=-40.0)

    # Exam table: a foam pad and a carbon-fibre board (two dense shells, foam core) under the back.
    if table:
        back = max(_TRUNK_RY) + 2
        outside = lambda labels, ct: ct == np.float32(AIR)  # noqa: E731
        for y_lo, y_hi, value, half_width in ((back, back + 12, -650.0, 200.0), (back + 12, back + 15, 120.0, 225.0),
                                              (back + 15, back + 44, -850.0, 225.0),
                                              (back + 44, back + 47, 120.0, 225.0)):
            def slab(x, y, s, y_lo=y_lo, y_hi=y_hi, half_width=half_width):
                bend = 0.0006 * x**2  # the board curves up at its edges
                return (np.abs(x) <= half_width) & (y >= y_lo - bend) & (y < y_hi - bend) & (s > -1e4)

            cv.paint(slab, (-half_width, y_lo - 40, -1e4), (half_width, y_hi, 1e4), value, where=outside)

    ct = cv.ct
    if noise_hu > 0:
        noise_rng = np.random.default_rng([seed, 1])
        for z0 in range(0, ct.shape[0], 64):
            ct[z0:z0 + 64] += noise_hu * noise_rng.standard_normal(ct[z0:z0 + 64].shape, dtype=np.float32)
    ct = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
    # Store as NIfTI-derived CTs usually are: direction diag(-1, -1, 1), so x and y run backwards.
    # Physical z grows cranially: index 0 is the most caudal slice.
    ct = np.ascontiguousarray(ct[:, ::-1, ::-1])
    structures = np.ascontiguousarray(cv.labels[:, ::-1, ::-1])
    origin = (x0 + (nx - 1) * sx, y0 + (ny - 1) * sy, -s_bottom)
    return Phantom(ct=ct, structures=structures, spacing=spacing, origin=origin, direction=(-1.0, 0.0, 0.0, 0.0, -1.0,
                   0.0, 0.0, 0.0, 1.0), seed=seed, fov=fov, contrast=contrast)
