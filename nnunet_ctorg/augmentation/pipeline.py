"""The device augmentation pipeline of ``CTOrgIOUTrainer``, built from an nnU-Net plan."""

import math
from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

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
    BatchedRandomTransform,
    BatchedSlabOcclusion,
    BatchedTrainingTargets,
)


def pack_parameters(parameters: Sequence[dict]) -> torch.Tensor:
    """Every tensor of every transform's parameters, flattened into one float32 buffer (dict order)."""
    values = [value.reshape(-1).to(torch.float32) for params in parameters for value in params.values()
              if isinstance(value, torch.Tensor)]
    return torch.cat(values) if values else torch.zeros(0)


def unpack_parameters(parameters: Sequence[dict], buffer: torch.Tensor) -> list[dict]:
    """The parameters with each tensor replaced by its view of ``buffer`` (``pack_parameters``'s layout,
    booleans restored); the CPU originals stay under ``"host"``."""
    moved, start = [], 0
    for params in parameters:
        out = {**params, "host": params}
        for key, value in params.items():
            if isinstance(value, torch.Tensor):
                view = buffer[start:start + value.numel()].reshape(value.shape)
                out[key] = view != 0 if value.dtype == torch.bool else view
                start += value.numel()
        moved.append(out)
    return moved


def move_parameters(parameters: Sequence[dict], device: torch.device) -> list[dict]:
    """Every tensor of every transform's parameters on ``device`` in one host-to-device copy.

    The tensors are packed as float32 into one buffer (pinned for CUDA, so the copy does not block the
    host), copied once and unpacked into views; booleans come back as booleans. Each returned dict
    keeps the CPU original under ``"host"`` for the decisions that are made on the CPU.
    """
    if device.type == "cpu":
        return [{**params, "host": params} for params in parameters]
    buffer = pack_parameters(parameters)
    if device.type == "cuda":
        buffer = buffer.pin_memory()
    return unpack_parameters(parameters, buffer.to(device, non_blocking=True))


class DeviceAugmentation:
    """Augment a batch where it lies: ``(image, labels) -> (image, targets)``.

    ``image`` (B, C, *crop) float, ``labels`` (B, 1, *crop) integer with -1 for the loader's padding,
    crop at least the patch size; returns the (B, C, *patch) image and the loss targets (a list
    per deep-supervision scale, or one tensor). All random parameters of the batch are drawn on the
    CPU first (they depend on shapes only) and reach the device in one non-blocking copy
    (``move_parameters``); no transform reads device data back. Seeded: the same seed gives the same batch.
    """

    def __init__(self, transforms: Sequence[BasicTransform], seed: int | None = None):
        self.transforms = list(transforms)
        if not self.transforms or not isinstance(self.transforms[0], BatchedAffineWarp):
            raise ValueError(f"the first transform must be a BatchedAffineWarp, got {self.transforms[:1]!r}")
        self.reseed(seed)

    @property
    def warp(self) -> BatchedAffineWarp:
        return self.transforms[0]

    def reseed(self, seed: int | None) -> None:
        """Restart every transform's random stream from ``seed`` (``None``: fresh entropy)."""
        sequence = np.random.SeedSequence(seed)
        random_transforms = [t for t in self.transforms if isinstance(t, BatchedRandomTransform)]
        for transform, child in zip(random_transforms, sequence.spawn(len(random_transforms))):
            transform.reseed(int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))

    def draw_parameters(self, image_shape: Sequence[int]) -> list[dict]:
        """The CPU parameters of every transform for a batch of ``image_shape`` (B, C, *crop)."""
        crop = torch.empty(tuple(image_shape), device="meta")
        patch = torch.empty((*image_shape[:2], *self.warp.patch_size), device="meta")
        return [t.get_parameters(image=crop if i == 0 else patch) for i, t in enumerate(self.transforms)]

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | list]:
        if (image.ndim != 5 or labels.ndim != 5 or image.shape[0] != labels.shape[0]
                or image.shape[2:] != labels.shape[2:]):
            raise ValueError(f"expected image (B, C, X, Y, Z) and labels (B, 1, X, Y, Z) of one shape, got "
                             f"{tuple(image.shape)} and {tuple(labels.shape)}")
        parameters = move_parameters(self.draw_parameters(image.shape), image.device)
        data = {"image": image.float(), "segmentation": labels}
        for transform, params in zip(self.transforms, parameters):
            data = transform.apply(data, **params)
        return data["image"], data["segmentation"]


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


def _affine_warp(p: AugmentationParameters, patch_size: Sequence[int], ct_statistics, rotation: float,
                 in_plane_only: bool, mirror_axes: Sequence[int] | None,
                 spacing: Sequence[float] | None) -> BatchedAffineWarp:
    """The warp of ``p`` (the one place its ranges meet the plan's rotation, mirroring and spacing)."""
    if p.physical_rotation and spacing is None:
        raise ValueError("physical_rotation needs the plan's spacing, got spacing=None")
    air = [0.0 if s is None else (s[2] - s[0]) / s[1] for s in ct_statistics]
    rotation = math.radians(p.rotation_deg) if p.rotation_deg is not None else rotation
    return BatchedAffineWarp(patch_size, air, p.p_rotation, rotation, in_plane_only, p.p_scaling, p.scaling, p.p_shear,
                             p.shear, p.affine_noise, p.p_reflection, p.displacement_vox, mirror_axes or (), p.p_mirror,
                             spacing if p.physical_rotation else None, p.label_interpolation)


def augmentation_crop_size(parameters: AugmentationParameters, patch_size: Sequence[int],
                           rotation: float = math.radians(30), in_plane_only: bool = False,
                           spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """The loader crop that holds every point the warp of ``parameters`` can sample (see
    ``required_crop_size``); ``rotation`` and ``spacing`` as in ``build_device_augmentation``."""
    return _affine_warp(parameters, patch_size, [None], rotation, in_plane_only, None, spacing).crop_size()


def build_device_augmentation(parameters: AugmentationParameters, patch_size: Sequence[int],
                              ct_statistics: Sequence[tuple[float, float, float] | None],
                              rotation: float = math.radians(30), in_plane_only: bool = False,
                              mirror_axes: Sequence[int] | None = (0, 1, 2), cranio_caudal_axis: int = 0,
                              deep_supervision_scales: Sequence | None = None,
                              regions: Sequence | None = None, ignore_label: int | None = None,
                              spacing: Sequence[float] | None = None,
                              seed: int | None = None) -> DeviceAugmentation:
    """The pipeline: warp+mirror+crop, occlusion, noise, HU window, blur, brightness, contrast,
    low resolution, inverted gamma, gamma, then the loss targets.

    ``ct_statistics`` per channel (see ``ct_channel_statistics``): air (the lower clip of the CT
    normalisation) fills what lies outside the volume and occluded slabs; non-CT channels use 0.
    ``rotation`` (radians) is used when ``parameters.rotation_deg`` is None. ``spacing`` (mm, array
    axis order) is used when ``parameters.physical_rotation`` is set.
    Mirroring is folded into the warp; nnU-Net mirrors last, which is the same in distribution
    because every later operation is symmetric under flips.
    """
    p = parameters
    warp = _affine_warp(p, patch_size, ct_statistics, rotation, in_plane_only, mirror_axes, spacing)
    region_targets = None
    if regions is not None:
        region_targets = list(regions) + ([ignore_label] if ignore_label is not None else [])
    transforms: list[BasicTransform] = [
        warp,
        BatchedSlabOcclusion(cranio_caudal_axis, warp.image_fill, p.p_occlusion, p.occlusion_max_fraction),
        BatchedGaussianNoise(p.p_noise, p.noise_sigma_max),
        BatchedHUWindow([None if s is None else s[:2] for s in ct_statistics], p.p_window, p.window_lower_hu,
                        p.window_upper_hu),
        BatchedGaussianBlur(p.p_blur, p.blur_sigma),
        BatchedBrightness(p.p_brightness, p.brightness),
        BatchedContrast(p.p_contrast, p.contrast),
        BatchedLowResolution(p.p_low_resolution, p.low_resolution_scale, ignore_axes=(0,) if in_plane_only else ()),
        BatchedGamma(p.p_gamma_inverted, p.gamma, invert=True),
        BatchedGamma(p.p_gamma, p.gamma),
        BatchedTrainingTargets(deep_supervision_scales, region_targets),
    ]
    return DeviceAugmentation(transforms, seed)
