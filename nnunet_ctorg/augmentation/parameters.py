"""The one place where the ranges and probabilities of the device augmentation are set.

Paper 003 (Rister et al., §IV) draws every parameter uniformly from user ranges but publishes no
numbers; where it is silent the defaults are nnU-Net's (``nnUNetTrainer.get_training_transforms``
of nnU-Net 2.8.1 with batchgeneratorsv2 0.3.6), so that ``CTOrgIOUTrainer`` and ``nnUNetTrainer`` see
the same geometric and intensity variation, plus the paper's occlusion and HU window. A probability
is the chance that one example of a batch receives the operation. The parameter table of docs/augmentation.md lists
every value next to nnU-Net's and the paper's.
"""

from dataclasses import dataclass, fields, replace

from nnunet_ctorg.augmentation.transforms import LABEL_INTERPOLATIONS


@dataclass(frozen=True)
class AugmentationParameters:
    """Ranges and probabilities of ``DeviceAugmentation``; change them by subclassing a trainer.

    Affine warp x' = A x + b, b = c + d - A c (paper eq. 1), A = rotation . shear . scaling .
    reflection + generic noise:

    - ``p_rotation`` 0.2, ``rotation_deg`` None: nnU-Net's per-configuration range (±30° per axis
      in 3-D; ±180° about the first axis when the patch is anisotropic, "dummy 2-D");
    - ``p_scaling`` 0.2, ``scaling`` (0.7, 1.4): one factor for all axes, nnU-Net's;
    - ``p_shear`` 0.0, ``shear`` 0.1: off-diagonal terms U[-s, s] (the paper lists shearing but
      publishes no range, nnU-Net has none: off, so that 36 % of examples are warped as in nnU-Net);
    - ``affine_noise`` 0.0: U[-e, e] added to every entry of A ("generic affine warping"; off);
    - ``p_reflection`` 0.0 per axis: off because ``p_mirror`` (nnU-Net's mirroring) does it;
    - ``displacement_vox`` 0.0: d ~ U[-v, v] voxels per axis (the loader's random crop already
      translates; raise it to displace beyond that);
    - ``label_interpolation`` "linear": every label's indicator interpolated and the largest wins
      (nnU-Net's ``SpatialTransform``); "nearest" is the paper's (cheaper, jagged under zoom: see the
      docs/augmentation.md, "Label interpolation");
    - ``physical_rotation`` False: rotation and shear act on voxel indices as in nnU-Net; True makes
      them act in millimetres (A_vox = S⁻¹ A S, S the plan's spacing), which keeps anatomy undistorted
      on anisotropic plans.

    Outside the volume the image is air and the label background, in training as in validation
    (nnU-Net's rule). The loader's crop is sized from these ranges (``required_crop_size``).

    Paper operations after the warp:

    - ``p_occlusion`` 0.2, ``occlusion_max_fraction`` 0.33: a slab of δ ~ U[0, δmax] slices along
      the cranio-caudal axis, δmax = fraction x patch length, start z ~ U[-δmax, zmax], set to air,
      labels to background;
    - ``p_noise`` 0.1, ``noise_sigma_max`` 0.1: additive Gaussian noise, σ ~ U[0, σmax] per example
      (z-score units; nnU-Net's ``GaussianNoiseTransform`` uses its drawn "noise_variance" (0, 0.1)
      as the standard deviation, so its σ is at most 0.1 too);
    - ``p_window`` 0.2, ``window_lower_hu`` (-1000, -150), ``window_upper_hu`` (230, 1500): clamp to
      [a, b] HU (the paper's lung/bone and abdominal windows bound the draws), in HU through the
      plan's CT normalisation, so the result is a z-scored CT again.

    nnU-Net's intensity and mirroring transforms, same ranges and probabilities: ``p_blur`` 0.2
    (σ ``blur_sigma`` (0.5, 1) voxels, each channel with p 0.5), ``p_brightness`` 0.15
    (``brightness`` (0.75, 1.25)), ``p_contrast`` 0.15 (``contrast`` (0.75, 1.25)),
    ``p_low_resolution`` 0.25 (``low_resolution_scale`` (0.5, 1), each channel with p 0.5),
    ``p_gamma_inverted`` 0.1 and ``p_gamma`` 0.3 (``gamma`` (0.7, 1.5), statistics retained),
    ``p_mirror`` 0.5 per allowed axis (folded into the warp).
    """

    p_rotation: float = 0.2
    rotation_deg: float | None = None
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_shear: float = 0.0
    shear: float = 0.1
    affine_noise: float = 0.0
    p_reflection: float = 0.0
    displacement_vox: float = 0.0
    label_interpolation: str = "linear"
    physical_rotation: bool = False
    p_occlusion: float = 0.2
    occlusion_max_fraction: float = 0.33
    p_noise: float = 0.1
    noise_sigma_max: float = 0.1
    p_window: float = 0.2
    window_lower_hu: tuple[float, float] = (-1000.0, -150.0)
    window_upper_hu: tuple[float, float] = (230.0, 1500.0)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution_scale: tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_mirror: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be a probability in [0, 1], got {value!r}")
            if isinstance(value, tuple) and not (len(value) == 2 and value[0] <= value[1]):
                raise ValueError(f"{f.name} must be a range (low, high) with low <= high, got {value!r}")
        for name in ("shear", "affine_noise", "displacement_vox", "noise_sigma_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.occlusion_max_fraction <= 1.0:
            raise ValueError(f"occlusion_max_fraction must be in [0, 1], got {self.occlusion_max_fraction!r}")
        if self.rotation_deg is not None and self.rotation_deg < 0:
            raise ValueError(f"rotation_deg must be >= 0 or None, got {self.rotation_deg!r}")
        if self.scaling[0] <= 0 or self.blur_sigma[0] < 0 or self.gamma[0] <= 0 or self.low_resolution_scale[0] <= 0:
            raise ValueError(f"scaling, gamma and low_resolution_scale must be > 0 and blur_sigma >= 0, got {self!r}")
        if self.label_interpolation not in LABEL_INTERPOLATIONS:
            raise ValueError(f"label_interpolation must be one of {LABEL_INTERPOLATIONS}, "
                             f"got {self.label_interpolation!r}")
        if self.window_lower_hu[1] >= self.window_upper_hu[0]:
            raise ValueError(f"window limits overlap: lower {self.window_lower_hu!r}, upper {self.window_upper_hu!r}")

    @classmethod
    def disabled(cls) -> "AugmentationParameters":
        """Every probability 0: the pipeline only crops the patch and downsamples the labels."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")})

    def with_probabilities(self, **probabilities: float) -> "AugmentationParameters":
        """A copy with some probabilities changed, e.g. ``with_probabilities(p_rotation=1)``."""
        return replace(self, **probabilities)
