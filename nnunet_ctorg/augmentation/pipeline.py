"""The device augmentation pipeline of ``CTOrgIOUTrainer``, built from an nnU-Net plan."""

import math
from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_ctorg.augmentation.parameters import AugmentationParameters
from nnunet_ctorg.augmentation.transforms import (
    BatchedAffineWarp,
    BatchedBrightness,
    BatchedContrast,
    BatchedGamma,
    BatchedGaussianBlur,
    BatchedGaussianNoise,
    BatchedHUWindow,
    BatchedLowResolution,
    BatchedMirror,
    BatchedRandomTransform,
    BatchedSlabOcclusion,
    BatchedTrainingTargets,
)


class DeviceAugmentation:
    """Augment a batch where it lies: ``(image, labels) -> (image, targets)``.

    ``image`` (B, C, *crop) float, ``labels`` (B, 1, *crop) integer with -1 for the loader's padding,
    crop at least the patch size; returns the (B, C, *patch) image and the loss targets (a list
    per deep-supervision scale, or one tensor). Seeded: the same seed gives the same batch.
    """

    def __init__(self, transforms: Sequence[BasicTransform], seed: int | None = None):
        self.transforms = ComposeTransforms(list(transforms))
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart every transform's random stream from ``seed`` (``None``: fresh entropy)."""
        sequence = np.random.SeedSequence(seed)
        random_transforms = [t for t in self.transforms.transforms if isinstance(t, BatchedRandomTransform)]
        for transform, child in zip(random_transforms, sequence.spawn(len(random_transforms))):
            transform.reseed(int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | list]:
        if (image.ndim != 5 or labels.ndim != 5 or image.shape[0] != labels.shape[0]
                or image.shape[2:] != labels.shape[2:]):
            raise ValueError(f"expected image (B, C, X, Y, Z) and labels (B, 1, X, Y, Z) of one shape, got "
                             f"{tuple(image.shape)} and {tuple(labels.shape)}")
        out = self.transforms(image=image.float(), segmentation=labels)
        return out["image"], out["segmentation"]


def ct_channel_statistics(normalization_schemes: Sequence[str],
                          intensity_properties: dict) -> list[tuple[float, float, float] | None]:
    """(mean, std, lower clip) in HU of each CT-normalised channel, ``None`` for other channels."""
    stats = []
    for channel, scheme in enumerate(normalization_schemes):
        props = intensity_properties.get(str(channel), intensity_properties.get(channel))
        if scheme == "CTNormalization" and props is not None:
            stats.append((float(props["mean"]), max(float(props["std"]), 1e-8), float(props["percentile_00_5"])))
        else:
            stats.append(None)
    return stats


def build_device_augmentation(parameters: AugmentationParameters, patch_size: Sequence[int],
                              ct_statistics: Sequence[tuple[float, float, float] | None],
                              rotation: float = math.radians(30), in_plane_only: bool = False,
                              mirror_axes: Sequence[int] | None = (0, 1, 2), cranio_caudal_axis: int = 0,
                              deep_supervision_scales: Sequence | None = None,
                              regions: Sequence | None = None, ignore_label: int | None = None,
                              seed: int | None = None) -> DeviceAugmentation:
    """The pipeline: warp+crop, occlusion, noise, HU window, blur, brightness, contrast,
    low resolution, inverted gamma, gamma, mirroring, then the loss targets.

    ``ct_statistics`` per channel (see ``ct_channel_statistics``): air (the lower clip of the CT
    normalisation) fills what lies outside the volume and occluded slabs; non-CT channels use 0.
    ``rotation`` (radians) is used when ``parameters.rotation_deg`` is None. Labels outside the
    volume become ``ignore_label`` when there is one, else background.
    """
    p = parameters
    air = [0.0 if s is None else (s[2] - s[0]) / s[1] for s in ct_statistics]
    if p.rotation_deg is not None:
        rotation = math.radians(p.rotation_deg)
    region_targets = None
    if regions is not None:
        region_targets = list(regions) + ([ignore_label] if ignore_label is not None else [])
    transforms: list[BasicTransform] = [
        BatchedAffineWarp(patch_size, air, 0 if ignore_label is None else ignore_label, p.p_rotation, rotation,
                          in_plane_only, p.p_scaling, p.scaling, p.p_shear, p.shear, p.affine_noise,
                          p.p_reflection, p.displacement_vox),
        BatchedSlabOcclusion(cranio_caudal_axis, air, p.p_occlusion, p.occlusion_max_fraction),
        BatchedGaussianNoise(p.p_noise, p.noise_sigma_max),
        BatchedHUWindow([None if s is None else s[:2] for s in ct_statistics], p.p_window, p.window_lower_hu,
                        p.window_upper_hu),
        BatchedGaussianBlur(p.p_blur, p.blur_sigma),
        BatchedBrightness(p.p_brightness, p.brightness),
        BatchedContrast(p.p_contrast, p.contrast),
        BatchedLowResolution(p.p_low_resolution, p.low_resolution_scale, ignore_axes=(0,) if in_plane_only else ()),
        BatchedGamma(p.p_gamma_inverted, p.gamma, invert=True),
        BatchedGamma(p.p_gamma, p.gamma),
    ]
    if mirror_axes:
        transforms.append(BatchedMirror(mirror_axes, p.p_mirror))
    transforms.append(BatchedTrainingTargets(deep_supervision_scales, region_targets))
    return DeviceAugmentation(transforms, seed)
